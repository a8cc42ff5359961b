"""Speculative decoding: a drafter proposes k tokens, the target model checks them all in one forward pass.

One verification path serves two drafters: the model's own MTP modules (`MTPDrafter`, module 0 reused
recursively for every draft) and a small model with the same tokenizer (`ModelDrafter`).
Greedy: accept the longest prefix that agrees with the target's argmax, then add the target's own next token, so
the output equals plain greedy decoding. Sampling: accept draft d with probability min(1, p(d) / q(d)); on a
rejection draw from norm(max(p - q, 0)) and stop. This leaves the output distribution exactly the target's.
Every cache is rolled back (`trim`) to the accepted tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Tuple

import mlx.core as mx

from .generate import prefill, prefill_hidden
from .vocab import vocab_size
from .sample import apply_min_p, apply_top_k, apply_top_p


@dataclass
class DraftStats:
    proposed: int = 0
    accepted: int = 0
    target_forwards: int = 0  # forward passes of the target model after the prompt


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0

    def logprobs(self, logits):
        """Logits (..., V) -> log-probabilities of the distribution tokens are drawn from."""
        x = logits.astype(mx.float32) / self.temperature
        x = apply_min_p(apply_top_p(apply_top_k(x, self.top_k), self.top_p), self.min_p)
        return x - mx.logsumexp(x, axis=-1, keepdims=True)


class Rng:
    """Draws from an explicit key (reproducible for a seed) or MLX's global state."""

    def __init__(self, key=None):
        self.key = key

    def _sub(self):
        if self.key is None:
            return None
        self.key, sub = mx.random.split(self.key)
        return sub

    def categorical(self, logprobs) -> int:
        return mx.random.categorical(logprobs, key=self._sub()).item()

    def uniform(self) -> float:
        return mx.random.uniform(key=self._sub()).item()


def choose(logits, sampling: Sampling, rng: Rng) -> Tuple[mx.array, Optional[mx.array]]:
    """A drafter's pick from its logits (V,): (token as a 0-d array, its distribution's log-probs or None when
    greedy). Greedy picks stay lazy, so a round's drafts and its verification run as one graph."""
    if sampling.temperature == 0:
        return mx.argmax(logits), None
    q = sampling.logprobs(logits)
    return mx.array(rng.categorical(q)), q


def draft(logits, k: int, step, sampling: Sampling, rng: Rng):
    """Pick k tokens from first logits (V,), feeding each pick but the last through `step(token) -> logits`."""
    drafts, qs = [], []
    for i in range(k):
        d, q = choose(logits, sampling, rng)
        drafts.append(d)
        qs.append(q)
        if i < k - 1:
            logits = step(d)
    return drafts, qs


def next_draft_length(k: int, accepted: int, proposed: int, most: int) -> int:
    """The schedule of transformers' assisted generation: every draft accepted -> two more next round, else one
    fewer, within 1..most. It depends on past rounds only, so sampled output keeps the target distribution."""
    return min(most, k + 2) if accepted == proposed else max(1, k - 1)


def agreeing(drafts: List[int], target: List[int]) -> Tuple[int, int]:
    """Greedy: target argmaxes (k + 1,) for [y, d_1..d_k] -> (number of drafts accepted, the token after them)."""
    n = 0
    while n < len(drafts) and drafts[n] == target[n]:
        n += 1
    return n, target[n]


def verify(logits, drafts: List[int], qs: list, sampling: Sampling, rng: Rng) -> Tuple[int, int]:
    """Sampling: target logits (k + 1, V) for [y, d_1..d_k] -> (number of drafts accepted, the token after them)."""
    k = len(drafts)
    ps = mx.exp(sampling.logprobs(logits))  # (k + 1, V)
    for i, (d, q) in enumerate(zip(drafts, qs)):
        q = mx.exp(q)
        if q.shape[-1] < ps.shape[-1]:  # a smaller draft vocabulary puts no mass on the ids past it
            q = mx.pad(q, (0, ps.shape[-1] - q.shape[-1]))
        p_d, q_d = ps[i, d].item(), q[d].item()
        if rng.uniform() * q_d < p_d:  # accept with probability min(1, p/q)
            continue
        residual = mx.maximum(ps[i] - q, 0.0)
        return i, rng.categorical(mx.log(residual / residual.sum()))
    return k, rng.categorical(mx.log(ps[k]))


class ModelDrafter:
    """A small model with the target's tokenizer proposes tokens one by one from its own cache.

    The two embeddings may differ in size (Qwen2.5-0.5B pads to 151936 rows, 7B to 152064; both cover the
    tokenizer's 151665 ids): drafts are drawn from the first `target_vocab` logits only, and a target token past
    the draft's rows (an id no tokenizer makes) reaches the draft as its last row. Output is still the target's:
    it verifies every draft."""

    needs_hidden = False

    def __init__(self, draft_model: Any, prefill_step_size: int = 512, target_vocab: Optional[int] = None):
        self.model, self.step = draft_model, prefill_step_size
        self.rows = vocab_size(draft_model) or 1 << 31
        self.width = min(self.rows, target_vocab or self.rows)

    def begin(self, tokens: List[int], hidden, first: int, rollback: int):
        self.cache = self.model.make_cache(rollback=rollback)
        self.pending = list(tokens) + [first]  # committed tokens this drafter has not seen
        self.fed = 0

    def propose(self, k: int, sampling: Sampling, rng: Rng):
        ids = [min(t, self.rows - 1) for t in self.pending]
        logits = prefill(self.model, ids, self.cache, self.step)[0, : self.width]
        drafts = draft(logits, k, lambda d: self.model(d.reshape(1, 1), cache=self.cache)[0, -1, : self.width],
                       sampling, rng)
        self.fed = k - 1  # d_1 .. d_{k-1} went into the cache
        return drafts

    def accept(self, n: int, drafts: List[int], bonus: int, hidden):
        for c in self.cache:
            c.trim(self.fed - min(n, self.fed))
        self.pending = ([drafts[-1]] if n == len(drafts) else []) + [bonus]


class MTPDrafter:
    """The target's own MTP module 0, fed the target's hidden states; reused recursively for drafts 2..k."""

    needs_hidden = True

    def __init__(self, model: Any):
        if not model.mtp_modules:
            raise ValueError("this model has no MTP modules (num_nextn_predict_layers weights); use a draft model")
        self.model = model

    def begin(self, tokens: List[int], hidden, first: int, rollback: int):
        self.cache = self.model.make_mtp_cache(rollback=rollback)[0]
        # module 0 pairs the hidden state at position i with token i + 1
        self.pending = (hidden, list(tokens[1:]) + [first])
        self.speculative = 0

    def propose(self, k: int, sampling: Sampling, rng: Rng):
        h, toks = self.pending
        h, logits = self.model.mtp_step(0, mx.array([toks]), h, self.cache)
        h = h[:, -1:]

        def step(d):  # the module's own output stands in for the target's hidden state
            nonlocal h
            h, logits = self.model.mtp_step(0, d.reshape(1, 1), h, self.cache)
            return logits[0, -1]

        drafts = draft(logits[0, -1], k, step, sampling, rng)
        self.speculative = k - 1  # positions fed from drafted tokens, undone before the next round
        return drafts

    def accept(self, n: int, drafts: List[int], bonus: int, hidden):
        self.cache.trim(self.speculative)
        self.pending = (hidden[:, : n + 1], drafts[:n] + [bonus])


def speculative_generate_step(
    model: Any,
    tokens: List[int],
    cache: list,
    drafter,
    num_draft: int,
    sampling: Sampling,
    key=None,
    max_tokens: int = 256,
    prefill_step_size: int = 512,
    stats: Optional[DraftStats] = None,
    adaptive: bool = True,
    interrupt=None,
) -> Iterator[Tuple[int, mx.array]]:
    """Yield (token, target log-probs (V,)). Each round drafts `num_draft` tokens, or with `adaptive` a number
    that follows the acceptance (`next_draft_length`, at most num_draft). When the caller stops, the cache holds
    the prompt and exactly the tokens yielded (the cache needs `rollback` >= num_draft: see `Decoder.make_cache`)."""
    if num_draft < 1:
        raise ValueError(f"num_draft must be >= 1, got {num_draft}")
    stats = stats if stats is not None else DraftStats()
    rng = Rng(key)
    start = cache[0].offset
    yielded, y = 0, None

    def log_softmax(x):
        return x - mx.logsumexp(x, axis=-1, keepdims=True)

    def first_token(logits):
        return mx.argmax(logits).item() if sampling.temperature == 0 else rng.categorical(sampling.logprobs(logits))

    try:
        h = prefill_hidden(model, tokens, cache, prefill_step_size, drafter.needs_hidden, interrupt)
        logits = model.head(h[:, -1:])[0, -1]
        y = first_token(logits)
        drafter.begin(tokens, h, y, rollback=num_draft)
        yielded += 1
        yield y, log_softmax(logits)
        length = num_draft
        while max_tokens == -1 or yielded < max_tokens:
            k = length if max_tokens == -1 else min(length, max_tokens - yielded)
            drafts, qs = drafter.propose(k, sampling, rng)
            tokens_in = mx.concatenate([mx.array([y]), mx.stack(drafts).astype(mx.int32)])  # (k + 1,), lazy
            hidden = model.model(tokens_in[None], cache)  # (1, k + 1, D)
            logits = model.head(hidden)[0]  # (k + 1, V)
            if sampling.temperature == 0:
                # drafting and verification are one graph, read back with the round's one wait
                checked = mx.concatenate([tokens_in[1:], mx.argmax(logits, axis=-1).astype(mx.int32)]).tolist()
                drafts = checked[:k]
                n, y = agreeing(drafts, checked[k:])
            else:
                mx.async_eval(logits)
                drafts = tokens_in[1:].tolist()
                n, y = verify(logits, drafts, qs, sampling, rng)
            for c in cache:
                c.trim(k - n)
            drafter.accept(n, drafts, y, hidden)
            length = next_draft_length(length, n, k, num_draft) if adaptive else num_draft
            stats.proposed, stats.accepted, stats.target_forwards = (
                stats.proposed + k, stats.accepted + n, stats.target_forwards + 1)
            logprobs = log_softmax(logits)
            for i, t in enumerate(drafts[:n] + [y]):
                if max_tokens != -1 and yielded == max_tokens:
                    return
                yielded += 1
                yield t, logprobs[i]
    finally:
        # Leave the cache holding the prompt and exactly the yielded tokens (the last one is not fed yet).
        held, want = cache[0].offset, start + len(tokens) + yielded
        if held > want:
            for c in cache:
                c.trim(held - want)
        elif held < want and y is not None:
            # left lazy, like plain decoding's queued step: it runs when the cache is next used, or never
            model.model(mx.array([[y]]), cache)
