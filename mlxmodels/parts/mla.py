"""Multi-head latent attention (DeepSeek-V2/V3, Kimi K2).

Keys and values are per-head up-projections of one compressed latent c (kv_lora_rank) per token, plus one
shared RoPE key. The cache keeps only the row [c, k_rope]: (kv_lora_rank + qk_rope_head_dim) values per token.

Decode runs absorbed: W_UK folds into the query (q_nope @ W_UK -> latent space) and W_UV applies after
attention, so attention is one-KV-head attention over the cached rows with q' = [q_nope W_UK, q_rope] and the
rows serving as keys and (their first kv_lora_rank features) as values. Long prefills expand K/V per head
instead, which is cheaper when many queries share the keys. Both give the same numbers.
"""

import math

import mlx.core as mx
import mlx.nn as nn

from ..spec import MLASpec
from .compiled import compiled, use_compiled
from .norms import RMSNorm
from .quantized import QuantizedStack
from .rope import RoPE

ABSORB_MAX_QUERIES = 16  # up to this many new tokens (decode, speculative verification) use the absorbed form


class MultiLinear(nn.Module):
    """One (out, in) matrix per head: x (B, H, T, in) -> (B, H, T, out)."""

    def __init__(self, in_dims: int, out_dims: int, n_heads: int):
        super().__init__()
        bound = math.sqrt(1.0 / in_dims)
        self.weight = mx.random.uniform(-bound, bound, (n_heads, out_dims, in_dims))

    def __call__(self, x, transpose: bool = True):
        return x @ (self.weight.swapaxes(-1, -2) if transpose else self.weight)

    def to_quantized(self, group_size: int = 64, bits: int = 4, mode: str = "affine"):
        return QuantizedMultiLinear(self.weight, group_size, bits, mode)


class QuantizedMultiLinear(QuantizedStack):
    def __call__(self, x, transpose: bool = True):
        return mx.quantized_matmul(x, self["weight"], self["scales"], self.get("biases"), transpose=transpose,
                                   **self.options())


class MLA(nn.Module):
    def __init__(self, hidden: int, spec: MLASpec):
        super().__init__()
        self.spec = spec
        H, qk = spec.n_heads, spec.qk_nope_head_dim + spec.qk_rope_head_dim
        if spec.q_lora_rank:
            self.q_a_proj = nn.Linear(hidden, spec.q_lora_rank, bias=spec.bias)
            self.q_a_layernorm = RMSNorm(spec.q_lora_rank, spec.latent_eps)
            self.q_b_proj = nn.Linear(spec.q_lora_rank, H * qk, bias=False)
        else:
            self.q_proj = nn.Linear(hidden, H * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, spec.kv_lora_rank + spec.qk_rope_head_dim, bias=spec.bias)
        self.kv_a_layernorm = RMSNorm(spec.kv_lora_rank, spec.latent_eps)
        # kv_b_proj of the checkpoint, split per head: W_UK^T (nope -> latent) and W_UV (latent -> v)
        self.embed_q = MultiLinear(spec.qk_nope_head_dim, spec.kv_lora_rank, H)
        self.unembed_out = MultiLinear(spec.kv_lora_rank, spec.v_head_dim, H)
        self.o_proj = nn.Linear(H * spec.v_head_dim, hidden, bias=spec.bias)
        self.rope = RoPE(spec.rope)
        self.scale = spec.scale if spec.scale is not None else qk**-0.5

    def __call__(self, x, cache):
        # x: (B, T, hidden)
        B, T, _ = x.shape
        if T <= ABSORB_MAX_QUERIES or getattr(cache, "absorbed_only", False):  # a bounded cache attends itself
            if use_compiled(T) and self.rope.offset_as_array:  # the position as an array: one trace for all
                offset = cache.offset if isinstance(cache.offset, mx.array) else mx.array(cache.offset)
                q_abs, rows = compiled(self, "_absorbed_inputs")(x, offset)
            else:
                q_abs, rows = self._absorbed_inputs(x, cache.offset)
            out = self.unembed_out(cache.attend(q_abs, rows, None, self.scale))  # (B, H, T, v)
        else:
            q_nope, q_rope, rows = self._project(x, cache.offset)
            out = self._expanded(q_nope, q_rope, rows, cache)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, T, -1))

    def _project(self, x, offset):
        """-> q_nope (B, H, T, nope), q_rope (B, H, T, rope), rows (B, 1, T, kv_lora + rope): what the cache keeps."""
        B, T, _ = x.shape
        s = self.spec
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if s.q_lora_rank else self.q_proj(x)
        q = q.reshape(B, T, s.n_heads, -1).transpose(0, 2, 1, 3)  # (B, H, T, nope + rope)
        q_nope, q_rope = q[..., : s.qk_nope_head_dim], q[..., s.qk_nope_head_dim:]
        latent, k_rope = mx.split(self.kv_a_proj_with_mqa(x), [s.kv_lora_rank], axis=-1)
        latent = self.kv_a_layernorm(latent)[:, None]  # (B, 1, T, kv_lora)
        # one rotation for the query heads and the shared key: off the GPU, RoPE is some twenty small ops per call
        rotated = self.rope(mx.concatenate([q_rope, k_rope[:, None]], axis=1), offset)  # (B, H + 1, T, rope)
        q_rope, k_rope = rotated[:, :-1], rotated[:, -1:]
        return q_nope, q_rope, mx.concatenate([latent, k_rope], axis=-1)

    def _absorbed_inputs(self, x, offset):
        """-> q' = [q_nope W_UK, q_rope] (B, H, T, kv_lora + rope) and the new cache rows."""
        q_nope, q_rope, rows = self._project(x, offset)
        return mx.concatenate([self.embed_q(q_nope), q_rope], axis=-1), rows

    def _expanded(self, q_nope, q_rope, rows, cache):
        """Prefill: attend with per-head K/V expanded from the cached latents."""
        s = self.spec
        mask = cache.mask(q_nope.shape[2])
        rows = cache.update_and_fetch(rows)  # (B, 1, S, kv_lora + rope)
        latent, k_rope = rows[..., : s.kv_lora_rank], rows[..., s.kv_lora_rank:]
        k_nope = self.embed_q(latent, transpose=False)  # (B, H, S, nope)
        v = self.unembed_out(latent)  # (B, H, S, v)
        k = mx.concatenate([k_nope, mx.broadcast_to(k_rope, (*k_nope.shape[:3], s.qk_rope_head_dim))], axis=-1)
        q = mx.concatenate([q_nope, q_rope], axis=-1)
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
