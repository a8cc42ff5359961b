"""Sampling per request in a batch: each row of a step's logits (B, V) is drawn with its own request's settings.

A request keeps its state across steps (and across preemption): its PRNG key, split once per token as
generate_step does, so a seeded request draws the same tokens alone or batched; the counts of what it generated
(OpenAI's frequency and presence penalties); the recent tokens, prompt included (our repetition penalty, as in
`mlxm generate`). Rows whose settings are greedy with no penalty share one argmax over the batch.

Logprobs are those of the distribution after the penalties and before temperature and the top-k/p filters
(vLLM's default), so they do not change with the sampling settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import mlx.core as mx

from .generate import random_key
from .sample import make_repetition_penalty, make_sampler

MAX_TOP_LOGPROBS = 20  # OpenAI's limit
REPETITION_CONTEXT = 64  # tokens the repetition penalty looks back over (make_repetition_penalty's default)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: Optional[int] = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: bool = False
    top_logprobs: int = 0  # 0..20
    stop_tokens: frozenset = frozenset()  # ids that end the reply (EOS)

    def __post_init__(self):
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a whole number >= 1, got {self.max_tokens!r}")
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and -2.0 <= value <= 2.0):
                raise ValueError(f"{name} must be a number from -2 to 2 (0 disables it), got {value!r}")
        if not isinstance(self.top_logprobs, int) or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be a whole number from 0 to {MAX_TOP_LOGPROBS}, "
                             f"got {self.top_logprobs!r}")
        seed = self.seed
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 1 << 64):
            raise ValueError(f"seed must be a whole number from 0 to 2**64 - 1, got {seed!r}")
        # the rest with the samplers' own messages; no MLX array is made here (any thread may build params)
        make_sampler(self.temperature, self.top_k, self.top_p, self.min_p)
        make_repetition_penalty(self.repetition_penalty)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Drawn:
    token: int
    logprob: Optional[float] = None
    top_logprobs: Optional[List[Tuple[int, float]]] = None  # most probable first


class RowSampler:
    """One request's sampling state; `record` every token it emits (in order)."""

    def __init__(self, params: SamplingParams, prompt: Sequence[int]):
        self.params = params
        self.sampler = make_sampler(params.temperature, params.top_k, params.top_p, params.min_p)
        self.key = random_key(params.seed)
        self.repetition = (make_repetition_penalty(params.repetition_penalty, REPETITION_CONTEXT)
                           if params.repetition_penalty != 1.0 else None)
        self.recent = list(prompt[-REPETITION_CONTEXT:])
        self.counts: Dict[int, int] = {}  # generated token -> times

    @property
    def plain(self) -> bool:
        """Greedy with nothing that changes the logits: its token is the row's argmax."""
        p = self.params
        return p.greedy and self.repetition is None and not (p.frequency_penalty or p.presence_penalty)

    def process(self, logits: mx.array) -> mx.array:
        """The penalties on this row's logits (1, V)."""
        if self.repetition is not None and self.recent:
            logits = self.repetition(mx.array(self.recent, mx.int32), logits)
        p = self.params
        if self.counts and (p.frequency_penalty or p.presence_penalty):
            ids = mx.array(list(self.counts), mx.int32)[None]  # (1, n)
            counts = mx.array(list(self.counts.values()), mx.float32)[None]
            penalty = (p.frequency_penalty * counts + p.presence_penalty).astype(logits.dtype)
            logits = mx.put_along_axis(logits, ids, mx.take_along_axis(logits, ids, axis=-1) - penalty, axis=-1)
        return logits

    def draw(self, logprobs: mx.array) -> mx.array:
        """A token (1,) from this row's logprobs (1, V); the key advances once per token."""
        sub = None
        if self.key is not None:
            self.key, sub = mx.random.split(self.key)
        return self.sampler(logprobs, sub)

    @property
    def needs_history(self) -> bool:
        """Its next logits depend on the tokens it emitted (penalties): its next step waits for this one."""
        p = self.params
        return self.repetition is not None or bool(p.frequency_penalty or p.presence_penalty)

    def record(self, token: int) -> None:
        self.counts[token] = self.counts.get(token, 0) + 1
        self.recent = (self.recent + [token])[-REPETITION_CONTEXT:]


class Draw:
    """One token per row of logits (B, V), each by its own request's settings: built lazily (`tokens` can feed the
    next forward pass before anything is evaluated), then `read` once for the tokens and the logprobs asked for.
    `share` maps the drawn tokens (B,) to those every rank uses (distributed/follow_engine.py: rank 0's), so that
    the ranks of a split model never feed different tokens; None keeps this process's own."""

    def __init__(self, rows: List[RowSampler], logits: mx.array, share: Optional[Callable] = None):
        self.rows = rows
        share = share or (lambda tokens: tokens)
        if not all(r.plain for r in rows):
            logits = mx.concatenate([logits[i: i + 1] if r.plain else r.process(logits[i: i + 1])
                                     for i, r in enumerate(rows)])
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)  # (B, V)
        # over the logprobs, as generate_step's greedy sampler: rounding can tie two logits there, not here
        argmax = mx.argmax(logprobs, axis=-1).astype(mx.int32)  # (B,)
        self.plain = all(r.params.greedy and not (r.params.logprobs or r.params.top_logprobs) for r in rows)
        if self.plain:  # the common case: nothing else to read
            self.tokens = share(argmax)
            self.arrays = [self.tokens]
            return
        self.tokens = share(mx.concatenate([argmax[i: i + 1] if r.params.greedy else r.draw(logprobs[i: i + 1])
                                            for i, r in enumerate(rows)]))  # (B,)
        chosen = mx.take_along_axis(logprobs, self.tokens[:, None], axis=-1)[:, 0]  # (B,)
        self.arrays = [self.tokens, chosen]
        k = max(r.params.top_logprobs for r in rows)
        if k:
            top = mx.argpartition(-logprobs, kth=k - 1, axis=-1)[:, :k]  # (B, k) unordered
            self.arrays += [top, mx.take_along_axis(logprobs, top, axis=-1)]

    def read(self) -> List[Drawn]:
        mx.eval(*self.arrays)
        tokens, *extra = [a.tolist() for a in self.arrays]
        out = []
        for i, r in enumerate(self.rows):
            d = Drawn(tokens[i])
            if r.params.logprobs or r.params.top_logprobs:
                d.logprob = extra[0][i]
            if r.params.top_logprobs:
                pairs = sorted(zip(extra[1][i], extra[2][i]), key=lambda p: (-p[1], p[0]))
                d.top_logprobs = pairs[: r.params.top_logprobs]
            r.record(d.token)
            out.append(d)
        return out

