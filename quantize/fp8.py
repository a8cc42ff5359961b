"""FP8 block-scaled checkpoints (DeepSeek-V3, Kimi K2, Qwen3-FP8): F8_E4M3 weights with a `weight_scale_inv`
per block of `weight_block_size` (128 x 128), the last row and column blocks ragged.

    w[i, j] = e4m3(q[i, j]) * scale_inv[i // bm, j // bn]       (in float32: one rounding, as NumPy would)

Every E4M3 value is exact in float32, so the only rounding is the product's (and the later cast).
"""

from __future__ import annotations

from typing import Optional, Sequence

import mlx.core as mx

from mlxmodels.config import ModelError

SCALE = "_scale_inv"  # `x.weight_scale_inv` scales `x.weight`
DEFAULT_BLOCK = (128, 128)


class FP8Error(ModelError):
    """An FP8 checkpoint whose scales do not fit its weights."""


def block_size(config: dict) -> Optional[tuple]:
    """The block size when config.json declares an FP8 checkpoint, else None."""
    q = config.get("quantization_config") or {}
    if q.get("quant_method") != "fp8":
        return None
    return tuple(q.get("weight_block_size") or DEFAULT_BLOCK)


def dequantize(bits: mx.array, scale_inv: mx.array, block: Sequence[int] = DEFAULT_BLOCK) -> mx.array:
    """bits (..., m, n) uint8 E4M3, scale_inv (..., ceil(m/bm), ceil(n/bn)) (or one scale) -> float32 (..., m, n)."""
    w = mx.from_fp8(bits, dtype=mx.float32)
    s = scale_inv.astype(mx.float32)
    if s.size == 1:
        return w * s.reshape(())
    m, n = w.shape[-2:]
    bm, bn = block
    want = (-(-m // bm), -(-n // bn))
    if w.ndim < 2 or tuple(s.shape[-2:]) != want or s.shape[:-2] != w.shape[:-2]:
        raise FP8Error(f"scale shape {tuple(s.shape)} does not fit a weight of shape {tuple(w.shape)} with "
                       f"{bm}x{bn} blocks (expected {(*w.shape[:-2], *want)}); check weight_block_size in "
                       "config.json's quantization_config")
    s = mx.repeat(mx.repeat(s, bm, axis=-2), bn, axis=-1)[..., :m, :n]  # one scale per element, ragged edges cut
    return w * s


def dequantize_group(tensors: dict, dtypes: dict, block: Optional[Sequence[int]]) -> dict:
    """Replace every F8_E4M3 `x.weight` and its `x.weight_scale_inv` by the float32 weight.

    `dtypes` gives each tensor's safetensors dtype (F8 tensors arrive as uint8 bits)."""
    out = {}
    for name, t in tensors.items():
        if name.endswith(SCALE):
            base = name[: -len(SCALE)]
            if base not in tensors:
                raise FP8Error(f"{name} scales {base}, which the checkpoint does not have; it is incomplete")
            continue
        if dtypes.get(name) == "F8_E4M3":
            scale = tensors.get(name + SCALE)
            if scale is None:
                raise FP8Error(f"{name} is F8_E4M3 but has no {name + SCALE}; only block-scaled FP8 checkpoints "
                               "(DeepSeek-V3 style) can be converted")
            t = dequantize(t, scale, block or DEFAULT_BLOCK)
        out[name] = t
    return out
