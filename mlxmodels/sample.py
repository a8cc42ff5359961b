"""Samplers and logits processors: small pure functions over (B, V) arrays.

A sampler maps log-probabilities (B, V) and an optional PRNG key to tokens (B,) int32. With a key the
draw is a pure function of (logprobs, key), so a seeded run is reproducible whatever else uses MLX's
global random state; with key=None it draws from that global state (`mx.random.seed` controls it).

Order follows Hugging Face: logits processors (repetition penalty) on the raw logits, then temperature,
then top-k -> top-p -> min-p, each filter seeing the distribution left by the previous one (so top-p's
cumulative mass is over the renormalised top-k set). Filters set removed entries to -inf.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional

import mlx.core as mx

Sampler = Callable[[mx.array, Optional[mx.array]], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]

_NEG_INF = -float("inf")


def apply_top_k(logits: mx.array, k: int) -> mx.array:
    """Keep exactly the k largest entries per row (ties broken arbitrarily); k <= 0 or k >= V keeps all."""
    vocab = logits.shape[-1]
    if k <= 0 or k >= vocab:
        return logits
    drop = mx.argpartition(-logits, kth=k - 1, axis=-1)[..., k:]  # (B, V - k) indices outside the top k
    return mx.put_along_axis(logits, drop, mx.array(_NEG_INF, logits.dtype), axis=-1)


def apply_top_p(logits: mx.array, p: float) -> mx.array:
    """Nucleus: keep the smallest most-probable set whose probability mass reaches p (ties at the edge stay)."""
    if p >= 1.0:
        return logits
    ascending = mx.sort(logits, axis=-1)  # (B, V); a value sort is cheaper than argsort + scatter
    probs = mx.softmax(ascending.astype(mx.float32), axis=-1)
    # A token is needed while the mass ranked above it is still short of p; the rest are dropped.
    above = mx.cumsum(probs, axis=-1, reverse=True, inclusive=False)
    n_drop = (above >= p).sum(axis=-1, keepdims=True)  # (B, 1), < V since the top token has 0 above it
    threshold = mx.take_along_axis(ascending, n_drop, axis=-1)
    return mx.where(logits >= threshold, logits, mx.array(_NEG_INF, logits.dtype))


def apply_min_p(logits: mx.array, min_p: float) -> mx.array:
    """Keep tokens whose probability is at least min_p times the top token's probability."""
    if min_p <= 0.0:
        return logits
    threshold = mx.max(logits, axis=-1, keepdims=True) + math.log(min_p)  # log(p_max * min_p) + const
    return mx.where(logits < threshold, mx.array(_NEG_INF, logits.dtype), logits)


def _finite(**settings) -> None:
    # NaN fails every comparison, so range checks alone let it through; NaN or inf logits would then reach the
    # draw, whose result is no token at all
    for name, value in settings.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")


def greedy(logprobs: mx.array, key: Optional[mx.array] = None) -> mx.array:
    return mx.argmax(logprobs, axis=-1).astype(mx.int32)


def make_sampler(
    temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
) -> Sampler:
    """Build `sampler(logprobs (B, V), key=None) -> tokens (B,) int32`; temperature 0 is argmax."""
    _finite(temperature=temperature, top_p=top_p, min_p=min_p)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {top_k!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {top_p}")
    if not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1] (0 disables it), got {min_p}")
    if temperature == 0:
        return greedy

    inv_t = 1.0 / temperature

    def sampler(logprobs: mx.array, key: Optional[mx.array] = None) -> mx.array:
        x = logprobs * inv_t  # (B, V)
        if 0 < top_k < x.shape[-1]:
            # Same as apply_top_k, but the later filters and the draw then run over k entries, not V.
            idx = mx.argpartition(-x, kth=top_k - 1, axis=-1)[..., :top_k]  # (B, k)
            x = mx.take_along_axis(x, idx, axis=-1)
        x = apply_min_p(apply_top_p(x, top_p), min_p)
        tok = mx.random.categorical(x, axis=-1, key=key)  # (B,)
        if 0 < top_k < logprobs.shape[-1]:
            tok = mx.take_along_axis(idx, tok[..., None], axis=-1)[..., 0]
        return tok.astype(mx.int32)

    return sampler


def make_repetition_penalty(penalty: float, context_size: int = 64) -> LogitsProcessor:
    """HF repetition penalty over the last `context_size` tokens: positive logits / penalty, negative * penalty."""
    _finite(repetition_penalty=penalty)
    if penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1 disables it), got {penalty}")
    if context_size < 1:
        raise ValueError(f"repetition_context_size must be >= 1, got {context_size}")

    def repetition_penalty(tokens: mx.array, logits: mx.array) -> mx.array:
        if tokens.size == 0:
            return logits
        recent = tokens[-context_size:]  # (n,) repeats are fine: every copy writes the same value
        idx = mx.broadcast_to(recent[None], (logits.shape[0], recent.size))  # (B, n)
        picked = mx.take_along_axis(logits, idx, axis=-1)
        picked = mx.where(picked < 0, picked * penalty, picked / penalty)
        return mx.put_along_axis(logits, idx, picked, axis=-1)

    repetition_penalty.context_size = context_size  # lets generate_step bound the history it keeps
    return repetition_penalty


def make_logits_processors(
    repetition_penalty: float = 1.0, context_size: int = 64
) -> List[LogitsProcessor]:
    """Processors `p(tokens (n,), logits (B, V)) -> logits`; an empty list when nothing is enabled."""
    processors: List[LogitsProcessor] = []
    if repetition_penalty is not None and repetition_penalty != 1.0:
        processors.append(make_repetition_penalty(repetition_penalty, context_size))
    return processors
