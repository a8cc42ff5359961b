"""The kernels' semantics in plain MLX ops: what runs off a Metal GPU, and the oracle the kernels are tested against.

Same arguments and results as the Metal kernels (see each .metal file for the contract). Attention here gathers
every block of the table and masks, computing in float32; the kernels read only the visible blocks.
"""

from typing import Optional

import mlx.core as mx


def visible(context_lens: mx.array, S: int, window: Optional[int] = None, chunk: Optional[int] = None) -> mx.array:
    """(B, S) bool: key j is visible from the query at position context_len - 1."""
    pos = (context_lens - 1)[:, None]  # (B, 1)
    j = mx.arange(S)[None, :]  # (1, S)
    ok = j <= pos
    if window:
        ok = ok & (pos - j < window)
    if chunk:
        ok = ok & (pos // chunk == j // chunk)
    return ok


def gather_blocks(pool: mx.array, block_tables: mx.array) -> mx.array:
    """pool (num_blocks, BS, ...) through tables (B, max_blocks) -> (B, max_blocks * BS, ...), token order."""
    rows = pool[block_tables]  # (B, max_blocks, BS, ...)
    return rows.reshape(rows.shape[0], -1, *pool.shape[2:])


def _softmax_rows(scores: mx.array, ok: mx.array) -> mx.array:
    scores = mx.where(ok, scores, mx.array(-mx.inf, mx.float32))
    top = mx.maximum(scores.max(axis=-1, keepdims=True), -1e30)  # an empty row stays finite
    e = mx.where(ok, mx.exp(scores - top), 0.0)
    den = e.sum(axis=-1, keepdims=True)
    return e / mx.where(den > 0, den, 1.0)  # an empty slot (context_len 0) gives 0


def paged_attention(q, k_pool, v_pool, block_tables, context_lens, scale: float, softcap: Optional[float] = None,
                    window: Optional[int] = None, chunk: Optional[int] = None) -> mx.array:
    """q (B, H, D) over pools (num_blocks, BS, Hkv, D) -> (B, H, D)."""
    B, H, D = q.shape
    Hkv = k_pool.shape[2]
    k = gather_blocks(k_pool, block_tables).astype(mx.float32).transpose(0, 2, 3, 1)  # (B, Hkv, D, S)
    v = gather_blocks(v_pool, block_tables).astype(mx.float32).transpose(0, 2, 1, 3)  # (B, Hkv, S, D)
    qg = q.astype(mx.float32).reshape(B, Hkv, H // Hkv, D) * scale  # (B, Hkv, G, D)
    scores = qg @ k  # (B, Hkv, G, S)
    if softcap:
        scores = mx.tanh(scores / softcap) * softcap
    ok = visible(context_lens, k.shape[-1], window, chunk)[:, None, None, :]  # (B, 1, 1, S)
    out = _softmax_rows(scores, ok) @ v  # (B, Hkv, G, D)
    return out.reshape(B, H, D).astype(q.dtype)


def paged_mla(q_latent, q_rope, pool, block_tables, context_lens, scale: float) -> mx.array:
    """q_latent (B, H, R), q_rope (B, H, P) over pool (num_blocks, BS, R + P) -> (B, H, R)."""
    R = q_latent.shape[-1]
    rows = gather_blocks(pool, block_tables).astype(mx.float32)  # (B, S, R + P)
    latent, k_rope = rows[..., :R], rows[..., R:]
    scores = (q_latent.astype(mx.float32) @ latent.swapaxes(1, 2)
              + q_rope.astype(mx.float32) @ k_rope.swapaxes(1, 2)) * scale  # (B, H, S)
    ok = visible(context_lens, rows.shape[1])[:, None, :]  # (B, 1, S)
    return (_softmax_rows(scores, ok) @ latent).astype(q_latent.dtype)  # (B, H, R)


def qmv(x, w, scales, biases, group_size: int = 64, bits: int = 4) -> mx.array:
    """x (M, K) . dequantize(w (N, K * bits / 32))^T -> (M, N)."""
    return mx.quantized_matmul(x, w, scales, biases, transpose=True, group_size=group_size, bits=bits)


def qmv_swiglu(x, gate, up, group_size: int = 64, bits: int = 4) -> mx.array:
    """gate, up: (w, scales, biases) -> silu(x . Wg^T) * (x . Wu^T), (M, N)."""
    g = qmv(x, *gate, group_size=group_size, bits=bits)
    u = qmv(x, *up, group_size=group_size, bits=bits)
    return g * mx.sigmoid(g) * u
