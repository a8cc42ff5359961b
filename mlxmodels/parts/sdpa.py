"""Scaled dot-product attention over grouped K/V heads, with an optional tanh soft cap on the scores."""

import mlx.core as mx


def attend(q, k, v, scale: float, mask, softcap=None):
    """q (B, H, T, D), k/v (B, Hkv, S, D) -> (B, H, T, Dv). mask: None | "causal" | bool (T, S)."""
    if softcap is None:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    q = q.reshape(B, Hkv, H // Hkv, T, D)
    scores = (q * scale) @ k[:, :, None].swapaxes(-1, -2)  # (B, Hkv, G, T, S)
    scores = mx.tanh(scores / softcap) * softcap
    if isinstance(mask, str):
        mask = mx.arange(S)[None] <= mx.arange(S - T, S)[:, None]
    if mask is not None:
        scores = mx.where(mask, scores, mx.array(-mx.inf, scores.dtype))
    weights = mx.softmax(scores.astype(mx.float32), axis=-1).astype(v.dtype)
    return (weights @ v[:, :, None]).reshape(B, H, T, -1)
