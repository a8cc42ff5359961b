"""Prefill several new sequences of a paged cache in one forward pass per round, each with prompts of its own length.

A round feeds every unfinished sequence the same number of tokens T (the longest remainder, at most `step_size`),
so the projections and FFNs of all of them run as one batch. A sequence with fewer tokens left is padded at its
end with its last token: causal attention keeps its real tokens from ever seeing the padding, and the padding
leaves its sequence (`pool.truncate`) right after the pass, so its cache holds exactly its tokens. Its last real
position gives its logits, as a prefill of it alone does. Where padding would cost more than `padding` allows (on
the CPU: any, see pad_limit), or the pool has no blocks for it, T is the shortest remainder instead (no padding;
more rounds, the first of which carries most of the tokens). Padding within pass_tokens() per round it saves is
always allowed: a round costs a whole forward pass however few its tokens, so a few tokens of padding beat the
rounds of one or two tokens that pacing by the shortest takes when remainders differ by a little.
"""

from typing import Callable, List, Optional, Sequence, Tuple

import mlx.core as mx

from .decoder import Decoder
from .parts.block_pool import PoolExhausted


def pad_limit() -> float:
    """How much padding a round may add, as a multiple of its real tokens: on a GPU a short prefill is bound by the
    passes it takes, so padding is nearly free (up to 2x); on the CPU every token is work (measured: padding 8
    prompts of 90-110 tokens to the longest was 10% slower than prefilling them one by one; rounds without it
    took the same time), so none."""
    return 2.0 if mx.default_device().type == mx.DeviceType.gpu else 1.0


def pass_tokens() -> int:
    """What one more forward pass costs, in prefill tokens: on the CPU a pass of a few tokens per row costs about
    a decode step, which SmolLM2-135M (float32, 8 rows) took as long as ~44 tokens of a long round (passes of 8x3
    and 8x17 tokens: 0.43 and 1.15 s); 32 keeps to the safe side. On a GPU pad_limit's 2x allows padding already
    (untuned there: 0)."""
    return 0 if mx.default_device().type == mx.DeviceType.gpu else 32


def prefill_together(model, cache, seqs: Sequence[int], todos: Sequence[List[int]], step_size: int = 512,
                     keep: Optional[Callable[[int], bool]] = None,
                     padding: float = 1.0, round_cost: int = 0) -> Tuple[List[int], Optional[mx.array]]:
    """Feed sequence seqs[i] the tokens todos[i] (each non-empty), after what it holds. `keep(i)` is asked between
    rounds for the sequences still being fed: False drops i (the caller frees it). A round pads when that makes its
    tokens at most `padding` times its real ones (1: never; pad_limit() suits the device), or adds at most
    `round_cost` tokens per round it saves (pass_tokens() suits the device). Returns the indices that
    were fed all their tokens, in order, and their last logits (F, V), unevaluated (None when none finished)."""
    if step_size < 1:
        raise ValueError(f"prefill step size must be >= 1, got {step_size}")
    pool = cache.pool
    # our Decoder runs its head on the last positions only; any other model (a wrapper) gives logits everywhere
    body, head = (model.model, model.head) if isinstance(model, Decoder) else (model, lambda x: x)
    live, fed = list(range(len(seqs))), [0] * len(seqs)
    finished: List[int] = []
    last: List[mx.array] = []  # (D,) hidden state (or logits) of each finished sequence's last token
    while live:
        left = [len(todos[i]) - fed[i] for i in live]
        T = min(step_size, max(left))
        real = sum(min(n, T) for n in left)
        saved = len({n for n in left if n < T})  # rounds that pacing by the shortest would add to reach T
        if len(live) * T - real > max((padding - 1) * real, round_cost * saved):
            T = min(left)  # padding would cost too much: the shortest sets the pace
        pool.active = [seqs[i] for i in live]
        try:
            rows, h = _round(body, cache, todos, live, fed, T)
        except PoolExhausted:  # before anything was written: no room for the padding, so none
            if T == min(left):
                raise
            T = min(left)
            rows, h = _round(body, cache, todos, live, fed, T)
        for b, (i, r) in enumerate(zip(live, rows)):
            if len(r) < T:  # its last round: the padding goes
                pool.truncate(seqs[i], pool.length(seqs[i]) - (T - len(r)))
            fed[i] += len(r)
            if fed[i] == len(todos[i]):
                finished.append(i)
                last.append(h[b, len(r) - 1])
        live = [i for i in live if fed[i] < len(todos[i])]
        if live:
            mx.eval(h, *last)  # one round's activations at a time, as a chunked prefill
            live = [i for i in live if keep is None or keep(i)]
    if not finished:
        return finished, None
    order = sorted(range(len(finished)), key=finished.__getitem__)  # in the callers' order, not the finishing one
    return [finished[k] for k in order], head(mx.stack([last[k] for k in order])[:, None])[:, -1, :]


def _round(body, cache, todos, live, fed, T):
    """The next T tokens of each live sequence (the shorter padded with their last), through `body`."""
    rows = [todos[i][fed[i]: fed[i] + T] for i in live]
    return rows, body(mx.array([r + [r[-1]] * (T - len(r)) for r in rows], mx.int32), cache=cache)  # (B, T, D|V)
