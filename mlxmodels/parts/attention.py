"""Multi-head attention with grouped K/V heads (MHA, GQA, MQA are n_kv_heads = n_heads, < n_heads, = 1).

Span (global, sliding window, chunked) and the attention over what is cached live in the cache
(`cache.attend`); this part only projects, normalises and rotates. Options set the order of operations
(QK-norm before RoPE), never a subclass.
"""

import mlx.core as mx
import mlx.nn as nn

from ..spec import AttnSpec, NormSpec
from .norms import l2_norm, make_norm
from .rope import RoPE


class Attention(nn.Module):
    def __init__(self, hidden: int, spec: AttnSpec, norm: NormSpec):
        super().__init__()
        self.spec = spec
        H, Hkv, D = spec.n_heads, spec.n_kv_heads, spec.head_dim
        self.q_proj = nn.Linear(hidden, H * D, bias=spec.bias)
        self.k_proj = nn.Linear(hidden, Hkv * D, bias=spec.bias)
        self.v_proj = nn.Linear(hidden, Hkv * D, bias=spec.bias)
        self.o_proj = nn.Linear(H * D, hidden, bias=spec.o_bias)
        qk_norm = NormSpec(norm.kind, spec.qk_norm_eps, norm.unit_offset)
        if spec.qk_norm == "head":
            self.q_norm, self.k_norm = make_norm(qk_norm, D), make_norm(qk_norm, D)
        elif spec.qk_norm == "proj":
            self.q_norm, self.k_norm = make_norm(qk_norm, H * D), make_norm(qk_norm, Hkv * D)
        self.rope = RoPE(spec.rope) if spec.rope is not None else None
        self.scale = spec.scale if spec.scale is not None else D**-0.5

    def __call__(self, x, cache):
        # x: (B, T, hidden)
        B, T, _ = x.shape
        s = self.spec
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if s.qk_norm == "proj":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.reshape(B, T, s.n_heads, s.head_dim).transpose(0, 2, 1, 3)  # (B, H, T, D)
        k = k.reshape(B, T, s.n_kv_heads, s.head_dim).transpose(0, 2, 1, 3)  # (B, Hkv, T, D)
        v = v.reshape(B, T, s.n_kv_heads, s.head_dim).transpose(0, 2, 1, 3)
        if not s.qk_norm_after_rope:
            q, k = self._head_norm(q, k)
        if self.rope is not None:
            q, k = self.rope(q, cache.offset), self.rope(k, cache.offset)
        if s.qk_norm_after_rope:
            q, k = self._head_norm(q, k)
        if s.temperature_tuning is not None:
            q = q * self._temperature(cache.offset, T).astype(q.dtype)
        out = cache.attend(q, k, v, self.scale, s.softcap)  # (B, H, T, D)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, T, -1))

    def _head_norm(self, q, k):
        if self.spec.qk_norm == "head":
            return self.q_norm(q), self.k_norm(k)
        if self.spec.qk_norm == "l2":
            return l2_norm(q, self.spec.qk_norm_eps), l2_norm(k, self.spec.qk_norm_eps)
        return q, k

    def _temperature(self, offset: int, T: int):
        """Llama 4's NoPE layers sharpen attention as positions grow: (T, 1) factors for the queries."""
        floor_scale, attn_scale = self.spec.temperature_tuning
        # offset: an int, or one position per sequence (B,) from a batched paged cache -> (B, 1, T, 1) factors
        start = offset[:, None, None].astype(mx.float32) if isinstance(offset, mx.array) else offset
        pos = start + mx.arange(T, dtype=mx.float32)
        return (mx.log1p(mx.floor((pos + 1.0) / floor_scale)) * attn_scale + 1.0)[..., None]
