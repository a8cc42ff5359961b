"""Rotary position embeddings and their scalings, on top of `mx.fast.rope`.

Every scaling is a rule that rewrites the inverse frequencies (and for YaRN, a factor on cos/sin);
the rotation itself is always `mx.fast.rope` with explicit frequencies, so all kinds share one code path.
"""

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..spec import RopeSpec


def default_inv_freq(dims: int, base: float) -> np.ndarray:
    return 1.0 / (base ** (np.arange(0, dims, 2, dtype=np.float32) / dims))


def llama3_inv_freq(spec: RopeSpec) -> np.ndarray:
    inv = default_inv_freq(spec.dims, spec.base)
    factor = spec.param("factor")
    low, high = spec.param("low_freq_factor", 1.0), spec.param("high_freq_factor", 4.0)
    old_len = spec.param("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / inv
    with np.errstate(divide="ignore", invalid="ignore"):  # high == low (Llama 4): no medium band to smooth
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv / factor + smooth * inv
    out = np.where(wavelen > old_len / low, inv / factor, inv)
    medium = (wavelen <= old_len / low) & (wavelen >= old_len / high)
    return np.where(medium, smoothed, out).astype(np.float32)


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_inv_freq(spec: RopeSpec):
    """YaRN: blend interpolated and extrapolated frequencies over a ramp; returns (inv_freq, cos/sin factor)."""
    dims, base = spec.dims, spec.base
    factor = spec.param("factor")
    orig = spec.param("original_max_position_embeddings") or spec.max_position_embeddings
    beta_fast, beta_slow = spec.param("beta_fast") or 32, spec.param("beta_slow") or 1
    attention_factor = spec.param("attention_factor")
    if attention_factor is None:
        m, m_all = spec.param("mscale"), spec.param("mscale_all_dim")
        attention_factor = yarn_mscale(factor, m) / yarn_mscale(factor, m_all) if m and m_all else yarn_mscale(factor)

    def correction_dim(rotations):
        return dims * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if spec.param("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dims - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dims // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation_weight = 1 - ramp
    pos_freqs = base ** (np.arange(0, dims, 2, dtype=np.float32) / dims)
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolation_weight) + (1.0 / pos_freqs) * extrapolation_weight
    return inv.astype(np.float32), float(attention_factor)


class RoPE(nn.Module):
    """Rotates the first `spec.dims` features of x (B, H, T, D) at positions offset .. offset + T - 1."""

    def __init__(self, spec: RopeSpec):
        super().__init__()
        self.spec = spec
        self.mscale = 1.0
        if spec.kind == "llama3":
            inv = llama3_inv_freq(spec)
        elif spec.kind == "yarn":
            inv, self.mscale = yarn_inv_freq(spec)
        elif spec.kind == "linear":
            inv = default_inv_freq(spec.dims, spec.base) / spec.param("factor")
        elif spec.kind in ("default", "dynamic"):
            inv = default_inv_freq(spec.dims, spec.base)
        else:
            raise ValueError(f"unsupported rope type {spec.kind!r}: use default, linear, dynamic, llama3 or yarn")
        # Private (underscore) so it is not a parameter: it is derived from the config, never loaded.
        self._freqs = mx.array(1.0 / inv)
        # dynamic NTK picks its frequencies from the position in Python, so its offset must stay an int
        self.offset_as_array = spec.kind != "dynamic"

    def _dynamic_freqs(self, seq_len: int):
        """Dynamic NTK: grow the base once the sequence passes the trained length (as transformers does)."""
        s = self.spec
        if seq_len <= s.max_position_embeddings:
            return self._freqs
        factor = s.param("factor")
        base = s.base * ((factor * seq_len / s.max_position_embeddings) - (factor - 1)) ** (s.dims / (s.dims - 2))
        return mx.array(1.0 / default_inv_freq(s.dims, base))

    def __call__(self, x, offset: int = 0):
        freqs = self._freqs
        if self.spec.kind == "dynamic":
            freqs = self._dynamic_freqs(offset + x.shape[-2])
        if self.mscale != 1.0:
            # transformers scales cos and sin, i.e. only the rotated features.
            d = self.spec.dims
            x = mx.concatenate([x[..., :d] * self.mscale, x[..., d:]], axis=-1) if d < x.shape[-1] else x * self.mscale
        return mx.fast.rope(
            x, self.spec.dims, traditional=self.spec.traditional, base=None, scale=1.0, offset=offset, freqs=freqs
        )
