"""Generation as a few small functions (gpt-fast style): prefill, step, sample; then text streaming.

The cache is the conversation state. `prefill` feeds tokens after whatever the cache already holds, so a
chat keeps one cache across turns and passes only the new tokens. When generation ends (EOS, stop string,
length, or the caller stops iterating), the cache holds the prompt and every token that was yielded,
EOS included, and nothing more: the next turn starts right after the last yielded token.

Decoding is pipelined as in mlx-lm: the forward pass for token n+1 is queued with `mx.async_eval` before
Python reads token n, so the device never waits on the Python loop.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import mlx.core as mx
from mlx.utils import tree_flatten

from .decoder import Decoder
from .errors import ContextError
from .vocab import VocabError, check_ids, vocab_size
from .sample import LogitsProcessor, Sampler, greedy, make_logits_processors, make_sampler

if TYPE_CHECKING:  # duck-typed at run time
    from .decoder import Decoder  # noqa: F401
    from .tokenizer import Tokenizer  # noqa: F401

__all__ = [
    "GenerationResponse",
    "generate",
    "generate_step",
    "make_logits_processors",
    "make_sampler",
    "prefill",
    "stream_generate",
]


@dataclass
class GenerationResponse:
    """One streamed piece. Stats are filled on every response; the last one (finish_reason set) is final."""

    text: str  # new text since the previous response
    token: int
    finish_reason: Optional[str] = None  # None | "stop" (EOS or stop string) | "length"
    prompt_tokens: int = 0
    prompt_tps: float = 0.0
    generation_tokens: int = 0  # tokens sampled so far, EOS included
    generation_tps: float = 0.0  # tokens after the first / time since the first (0 until there are two)
    time_to_first_token: float = 0.0  # seconds: prefill plus the first sample
    peak_memory: float = 0.0  # GB, since the start of this call
    logprobs: Optional[mx.array] = None  # (V,) after logits processors, before temperature and filters
    # speculative decoding (draft=...): drafts proposed and accepted, target forward passes after the prompt
    draft_proposed: int = 0
    draft_accepted: int = 0
    target_forwards: int = 0


def _as_tokens(tokens: Union[Sequence[int], mx.array]) -> mx.array:
    if isinstance(tokens, mx.array):
        if not mx.issubdtype(tokens.dtype, mx.integer):  # floats would be truncated, bools taken for ids 0/1
            raise ValueError(f"token ids must be integers, got an array of {tokens.dtype}")
    else:
        bad = next((t for t in tokens if isinstance(t, bool) or not isinstance(t, numbers.Integral)
                    or not -(1 << 31) <= t < 1 << 31), None)
        if bad is not None:  # checked before MLX casts them to int32 (truncating floats, failing on big ints)
            raise VocabError(f"token id {bad!r} is not a whole number in the model's vocabulary")
    tokens = mx.array(tokens, dtype=mx.int32)
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError(f"the prompt must be a non-empty 1-D list of token ids, got shape {tokens.shape}")
    return tokens


def random_key(seed: Optional[int]) -> Optional[mx.array]:
    """mx.random.key for a seed MLX takes (a whole number in [0, 2**64)); None for no seed."""
    if seed is None:
        return None
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must be a whole number from 0 to 2**64 - 1, got {seed!r}")
    return mx.random.key(seed)


def _fit_positions(model: Any, cache: List[Any], prompt: int, max_tokens: int) -> int:
    """Where generation must end. A model with learned positions (GPT-2) has no row past its table: it stops there
    whatever max_tokens says. -1 ("no limit") means until the model's context is full: past it a RoPE model only
    degrades, but an endless stream would grow the cache until memory runs out."""
    spec = getattr(model, "spec", None)
    table = getattr(spec, "learned_positions", None)
    if table:
        context = table
    elif max_tokens == -1:
        context = next((l.attn.rope.max_position_embeddings for l in getattr(spec, "layers", ())
                        if getattr(l.attn, "rope", None) is not None), None)
    else:
        return max_tokens
    if context is None:
        return max_tokens
    room = context - cache[0].offset - prompt
    if room < 1:
        raise ContextError(f"the prompt needs {cache[0].offset + prompt + 1} positions but the model has {context}; "
                           "shorten it")
    return room if max_tokens == -1 else min(max_tokens, room)


class Interrupted(Exception):
    """The caller's `interrupt()` asked to stop while a prompt was being fed (see prefill_hidden)."""


def _check_max_tokens(max_tokens) -> None:
    # the loops count up to it: 2.5, NaN or -2 would never be reached
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens == 0 or max_tokens < -1:
        raise ValueError(f"max_tokens must be a whole number >= 1 (or -1: until the context is full), "
                         f"got {max_tokens!r}")


def _cache_arrays(cache: List[Any]) -> List[mx.array]:
    """The arrays the caches hold (their `.state`), so a prefill chunk can be evaluated without its logits."""
    return [v for c in cache for _, v in tree_flatten(getattr(c, "state", None)) if isinstance(v, mx.array)]


def _clear_cache() -> None:
    fn = getattr(mx, "clear_cache", None)
    if fn is not None:
        fn()


Progress = Callable[[int, int], None]  # (prompt tokens processed, prompt tokens in all), as mlx-lm's callback


def prefill_hidden(model: Decoder, tokens: Union[Sequence[int], mx.array], cache: List[Any], step_size: int = 512,
                   keep_all: bool = False, interrupt: Optional[Callable[[], bool]] = None,
                   progress: Optional[Progress] = None) -> mx.array:
    """Feed `tokens` through the body after what `cache` holds, in chunks of `step_size`; -> the final hidden
    states of every position (1, P, D) with `keep_all`, else of the last (1, 1, D). Each chunk but the last is
    evaluated (through the cache state only, unless its states are kept), so memory stays bounded by one chunk;
    the last stays lazy. `interrupt()` is asked between chunks: True raises Interrupted (the cache then holds part
    of the prompt), so a long prompt can be abandoned within one chunk's time. `progress(done, total)` is called
    after each evaluated chunk (mlx-lm's prompt_progress_callback), so a UI can show a long prompt advancing."""
    if step_size < 1:
        raise ValueError(f"prefill step size must be >= 1, got {step_size}")
    ids, tokens = tokens, _as_tokens(tokens)
    check_ids(ids, model)  # a list is checked without waiting on the device
    kept = []
    for start in range(0, tokens.size, step_size):
        if interrupt is not None and start and interrupt():
            raise Interrupted(f"stopped after {start} of {tokens.size} prompt tokens")
        h = model.model(tokens[None, start: start + step_size], cache)
        if start + step_size < tokens.size:
            mx.eval(h if keep_all else (_cache_arrays(cache) or h))
            _clear_cache()
            if progress is not None:
                progress(start + step_size, tokens.size)
        kept.append(h if keep_all else h[:, -1:])
    return mx.concatenate(kept, axis=1) if keep_all else kept[-1]


def prefill(model: Any, tokens: Union[Sequence[int], mx.array], cache: List[Any], step_size: int = 512,
            interrupt: Optional[Callable[[], bool]] = None, progress: Optional[Progress] = None) -> mx.array:
    """Feed `tokens` after what `cache` holds; return the last position's logits (1, V), unevaluated.

    Our Decoder takes the prompt in one pass (`prefill_hidden`) and runs the output head on the last position only.
    Any other model gets all but the last token in chunks of `step_size`, each evaluated through the cache state
    (or its logits, if the cache holds no arrays we can see), then the last token in a pass of its own.
    `progress(done, total)` follows each evaluated chunk, as in `prefill_hidden`.
    """
    if step_size < 1:
        raise ValueError(f"prefill step size must be >= 1, got {step_size}")
    if isinstance(model, Decoder):
        return model.head(prefill_hidden(model, tokens, cache, step_size, interrupt=interrupt,
                                         progress=progress))[:, -1, :]
    ids, tokens = tokens, _as_tokens(tokens)
    check_ids(ids, model)
    n, start = tokens.size, 0
    while n - start > 1:
        if interrupt is not None and start and interrupt():
            raise Interrupted(f"stopped after {start} of {n} prompt tokens")
        end = min(start + step_size, n - 1)
        logits = model(tokens[None, start:end], cache=cache)  # (1, T, V), only evaluated as a fallback
        mx.eval(_cache_arrays(cache) or logits)
        start = end
        _clear_cache()
        if progress is not None:
            progress(start, n)
    return model(tokens[None, start:], cache=cache)[:, -1, :]


def _history_size(processors: List[LogitsProcessor]) -> Optional[int]:
    """How many recent tokens the processors look at; None (keep all) if one does not say."""
    sizes = [getattr(p, "context_size", None) for p in processors]
    return max(sizes) if sizes and all(isinstance(s, int) for s in sizes) else None


def generate_step(
    model: Any,
    prompt_tokens: Union[Sequence[int], mx.array],
    cache: List[Any],
    sampler: Optional[Sampler] = None,
    logits_processors: Optional[List[LogitsProcessor]] = None,
    *,
    max_tokens: int = 256,
    prefill_step_size: int = 512,
    key: Optional[mx.array] = None,
    interrupt: Optional[Callable[[], bool]] = None,
    progress: Optional[Progress] = None,
) -> Iterator[Tuple[int, mx.array]]:
    """Yield (token, logprobs (V,)) for up to `max_tokens` tokens (-1: no limit); the caller decides on EOS.

    `key` (from `mx.random.key(seed)`) makes sampling reproducible: it is split once per token.
    `progress(done, total)` follows each evaluated prompt chunk (see `prefill`).
    """
    _check_max_tokens(max_tokens)
    sampler = sampler or greedy
    processors = list(logits_processors or [])
    tokens = _as_tokens(prompt_tokens)
    keep = _history_size(processors)
    history = tokens[-keep:] if keep else tokens  # (n,) recent tokens, prompt included

    def sample(logits: mx.array) -> Tuple[mx.array, mx.array]:  # (1, V) -> (1,), (V,)
        nonlocal key
        for p in processors:
            logits = p(history, logits)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        sub = None
        if key is not None:
            key, sub = mx.random.split(key)
        return sampler(logprobs, sub), logprobs[0]

    def step(y: mx.array) -> Tuple[mx.array, mx.array]:
        nonlocal history
        if processors:
            history = mx.concatenate([history, y])
            if keep:
                history = history[-keep:]
        return sample(model(y[None], cache=cache)[:, -1, :])

    y, logprobs = sample(prefill(model, tokens, cache, prefill_step_size, interrupt, progress))
    mx.async_eval(y, logprobs)
    n = 0
    while n != max_tokens:
        # Queue token n+1 before reading token n: the cache then holds every token we yield.
        next_y, next_logprobs = step(y)
        mx.async_eval(next_y, next_logprobs)
        yield y.item(), logprobs
        y, logprobs = next_y, next_logprobs
        n += 1
        if n % 256 == 0:
            _clear_cache()


def _split_stop(text: str, stops: List[str]) -> Tuple[str, str, bool]:
    """-> (safe to emit, held back, stopped). Cut at the earliest stop string; hold back any suffix that
    may still grow into one. Since held text is re-examined with the next piece, a match always starts
    inside `text`, so stop strings spanning several tokens are caught."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    if hits:
        return text[: min(hits)], "", True
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    cut = len(text) - hold
    return text[:cut], text[cut:], False


class _NoText:
    """Detokenizer for tokenizer=None: token ids only, no text."""

    def add_token(self, token: int) -> str:
        return ""

    def finalize(self) -> str:
        return ""


def _encode(tokenizer: Any, prompt: Union[str, Sequence[int], mx.array]) -> mx.array:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("a text prompt needs a tokenizer; pass token ids when tokenizer is None")
        bos = getattr(tokenizer, "bos_token", None)  # a chat template may already have written BOS
        add_special = not (isinstance(bos, str) and bos and prompt.startswith(bos))
        prompt = tokenizer.encode(prompt, add_special_tokens=add_special)
    return _as_tokens(prompt)


def _reset_peak() -> None:
    fn = getattr(mx, "reset_peak_memory", None)
    if fn is not None:
        fn()


def _peak_gb() -> float:
    fn = getattr(mx, "get_peak_memory", None)
    return fn() / 1e9 if fn is not None else 0.0


def stream_generate(
    model: Any,
    tokenizer: Any,
    prompt: Union[str, Sequence[int], mx.array],
    max_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    repetition_context_size: int = 64,
    seed: Optional[int] = None,
    stop: Optional[List[str]] = None,
    cache: Optional[List[Any]] = None,
    prefill_step_size: int = 512,
    *,
    sampler: Optional[Sampler] = None,
    logits_processors: Optional[List[LogitsProcessor]] = None,
    draft: Any = None,
    num_draft: int = 3,
    adaptive_draft: bool = True,
    interrupt: Optional[Callable[[], bool]] = None,
    progress: Optional[Progress] = None,
) -> Iterator[GenerationResponse]:
    """Stream text pieces. Stops on any EOS id or stop string (neither is emitted) or after `max_tokens`.

    `prompt` is text (encoded here) or token ids; with a reused `cache`, pass only the tokens it lacks.
    `tokenizer=None` streams token ids only (text is "", no EOS); it needs an id prompt and no stop strings.
    `sampler`/`logits_processors` override the ones built from the sampling arguments.
    `interrupt()`, asked between prompt chunks, can abandon a long prompt: Interrupted is raised (start again with a
    new cache: this one holds part of the prompt).
    `progress(done, total)` is called after each evaluated prompt chunk (not with a draft: speculative decoding
    feeds the prompt its own way).
    `draft="mtp"` (the model's MTP modules) or a draft model turns on speculative decoding with up to `num_draft`
    drafts per step (fewer while drafts are rejected, unless `adaptive_draft=False`); greedy output is unchanged,
    sampled output keeps the same distribution.
    """
    _check_max_tokens(max_tokens)
    tokens = _encode(tokenizer, prompt)
    if cache is None:
        cache = model.make_cache(rollback=num_draft) if draft is not None else model.make_cache()
    max_tokens = _fit_positions(model, cache, tokens.size, max_tokens)
    if sampler is None:
        sampler = make_sampler(temperature, top_k, top_p, min_p)
    if logits_processors is None:
        logits_processors = make_logits_processors(repetition_penalty, repetition_context_size)
    key = random_key(seed)
    eos = frozenset(getattr(tokenizer, "eos_token_ids", None) or ())
    stops = [s for s in (stop or []) if s]
    if stops and tokenizer is None:
        raise ValueError("stop strings need a tokenizer to turn tokens into text")
    detokenizer = _NoText() if tokenizer is None else tokenizer.detokenizer()
    n_prompt = tokens.size

    _reset_peak()
    tic = time.perf_counter()
    ttft = t_first = 0.0

    def response(text: str, token: int, logprobs: mx.array, n: int, finish: Optional[str]) -> GenerationResponse:
        elapsed = time.perf_counter() - t_first
        return GenerationResponse(
            text=text,
            token=token,
            finish_reason=finish,
            prompt_tokens=n_prompt,
            prompt_tps=n_prompt / ttft,
            generation_tokens=n,
            generation_tps=(n - 1) / elapsed if n > 1 and elapsed > 0 else 0.0,
            time_to_first_token=ttft,
            peak_memory=_peak_gb(),
            logprobs=logprobs,
            draft_proposed=stats.proposed if stats else 0,
            draft_accepted=stats.accepted if stats else 0,
            target_forwards=stats.target_forwards if stats else 0,
        )

    def flush(held: str) -> Tuple[str, bool]:  # end of output: cut at a stop string, hold nothing back
        tail = held + detokenizer.finalize()
        if stops:
            cut, _, hit = _split_stop(tail, stops)
            return (cut, True) if hit else (tail, False)
        return tail, False

    held = ""
    stats = None
    if draft is None:
        steps = generate_step(
            model, tokens, cache, sampler, logits_processors,
            max_tokens=max_tokens, prefill_step_size=prefill_step_size, key=key, interrupt=interrupt,
            progress=progress,
        )
    else:
        from .speculative import DraftStats, ModelDrafter, MTPDrafter, Sampling, speculative_generate_step

        if logits_processors:
            raise ValueError("repetition penalty is not supported with speculative decoding; drop one of them")
        drafter = MTPDrafter(model) if draft == "mtp" else ModelDrafter(draft, prefill_step_size, vocab_size(model))
        stats = DraftStats()
        steps = speculative_generate_step(
            model, tokens.tolist(), cache, drafter, num_draft, Sampling(temperature, top_k, top_p, min_p),
            key=key, max_tokens=max_tokens, prefill_step_size=prefill_step_size, stats=stats, adaptive=adaptive_draft,
            interrupt=interrupt,
        )
    try:  # closing the step generator lets it leave the cache holding exactly the tokens yielded
        for n, (token, logprobs) in enumerate(steps, start=1):
            if n == 1:
                t_first = time.perf_counter()
                ttft = max(t_first - tic, 1e-9)
            if token in eos:
                tail, _ = flush(held)
                yield response(tail, token, logprobs, n, "stop")
                return
            piece = detokenizer.add_token(token)
            if stops:
                piece, held, hit = _split_stop(held + piece, stops)
                if hit:
                    yield response(piece, token, logprobs, n, "stop")
                    return
            if n == max_tokens:
                tail, hit = flush(held)
                yield response(piece + tail, token, logprobs, n, "stop" if hit else "length")
                return
            yield response(piece, token, logprobs, n, None)
    finally:
        steps.close()


def generate(
    model: Any,
    tokenizer: Any,
    prompt: Union[str, Sequence[int], mx.array],
    max_tokens: int = 64,
    temperature: float = 0.0,
    **sampling: Any,
) -> str:
    """The whole completion as one string; `sampling` takes stream_generate's other arguments."""
    pieces = stream_generate(model, tokenizer, prompt, max_tokens=max_tokens, temperature=temperature, **sampling)
    return "".join(r.text for r in pieces)
