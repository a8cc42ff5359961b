"""Rank 0 leads, the others follow: what rank 0 decided (the prompt's tokens, the seed, each sampled token) reaches
every rank through one all_sum in which the followers add zeros.

Every rank computes the same logits, but sampling is not left to each rank: a random draw (or a tie broken by a
last-bit difference) that went another way on one rank would feed the ranks different tokens, and the model's
collectives would then mix two sequences. With rank 0's token on every rank they cannot drift apart.
"""

import random
from typing import Callable

import mlx.core as mx


def from_leader(group, value: mx.array) -> mx.array:
    """rank 0's `value` on every rank (same shape and dtype everywhere)."""
    # value * 0, not zeros: zeros depend on nothing, so MLX could run this all_sum before the forward pass's own
    # collectives on a follower while rank 0 runs them first, and both would wait forever
    mine = value if group.rank() == 0 else value * 0
    return mx.distributed.all_sum(mine, group=group)


def leading(sampler: Callable, group) -> Callable:
    """A sampler (logprobs, key) -> token (1,) that returns rank 0's sample on every rank."""

    def sample(logprobs: mx.array, key=None) -> mx.array:
        return from_leader(group, sampler(logprobs, key))

    return sample


def share_tokens(group, tokens) -> list:
    """rank 0's token ids (a list) on every rank: their count first, then the ids."""
    n = int(from_leader(group, mx.array([len(tokens)], dtype=mx.int32)).item())
    mine = mx.array(list(tokens) if group.rank() == 0 else [0] * n, dtype=mx.int32)  # (n,)
    return from_leader(group, mine).tolist() if n else []


def share_seed(group, seed) -> int:
    """rank 0's seed on every rank (drawn on rank 0 when none is given), so that draws made outside the sampler
    (speculative decoding's acceptance test) come out the same everywhere."""
    if seed is not None:  # every rank runs the same command line
        return seed
    return int(from_leader(group, mx.array([random.getrandbits(31)], dtype=mx.int32)).item())


class Stoppable:
    """A leading sampler that carries rank 0's stop request with each token, for turns a person can stop (chat's
    Esc): every rank then ends the reply after the same token, and so runs the same number of forward passes
    (the collectives inside them must pair up). `asked()` is read on rank 0 when a token's step is built;
    `stopped(n)` says whether the n-th token (from 1) carried the request."""

    def __init__(self, sampler: Callable, group, asked: Callable[[], bool] = lambda: False,
                 tick: Callable[[], None] = lambda: None):
        self.sampler, self.group, self.asked, self.tick = sampler, group, asked, tick
        self.flags = []

    def __call__(self, logprobs: mx.array, key=None) -> mx.array:
        self.tick()
        token = self.sampler(logprobs, key)  # (1,)
        flag = mx.array([int(self.group.rank() == 0 and self.asked())], dtype=mx.int32)
        both = from_leader(self.group, mx.concatenate([token.astype(mx.int32), flag]))  # (2,): token, stop
        self.flags.append(both[1])
        return both[:1].astype(token.dtype)

    def stopped(self, n: int) -> bool:
        return bool(self.flags[n - 1].item())
