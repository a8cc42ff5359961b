"""The serving engine: one BatchGenerator stepped by one thread, fed by any number of request threads or loops.

`submit` checks a prompt where it is called (a bad one fails there, with a ValueError, and never reaches a step),
queues it and returns its Stream at once; the engine thread adds queued requests and applies cancellations between
steps, steps the batch while anything runs and sleeps otherwise. Requests waiting to be admitted are bounded
(`max_queue`, then QueueFull). A step that fails ends every open stream with an "error" event and the engine goes
on with a fresh generator, so one bad step never wedges the server.

A reply ends with one final event: its last token with "length", or no token (-1) with "stop" (a stop token,
which is not part of the text), "cancelled" or "error".

Every MLX array the engine uses is made on its thread: since MLX 0.31.2 streams are per thread on the GPU, and a
lazy array built on another thread fails there ("There is no Stream(gpu, 0) in current thread", as mlx_lm.server
met). So the generator and its pool are built by the thread, the model's weights are evaluated before it starts,
and submit() checks prompts in plain Python.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Deque, Dict, List, Optional, Tuple

import mlx.core as mx

from ..batch import BatchGenerator, BatchResponse, check_prompt
from ..parts.paged_quantized import check_kv_quantization
from ..row_sampling import SamplingParams
from .stream import Event, Stream

log = logging.getLogger("mlxmodels.serve")

DEFAULT_CONTEXT = 8192  # when the model's own limit is larger or unknown: a KV pool for it stays affordable
BLOCKS_PER_ROW_TOKENS = 2048  # the default pool holds max_batch sequences of this many tokens (or one full context)
PREFILL_BUDGET = 2048  # prompt tokens a step prefills before admitting waits for the next (vLLM's batched tokens)
RATE_WINDOW = 10.0  # seconds over which generation_tokens_per_second is measured


class QueueFull(RuntimeError):
    """max_queue requests are already waiting to be admitted."""


def model_context(model) -> Optional[int]:
    """Positions the model has: its learned position table, else its RoPE max_position_embeddings."""
    spec = getattr(model, "spec", None)
    if getattr(spec, "learned_positions", None):
        return spec.learned_positions
    return next((layer.attn.rope.max_position_embeddings for layer in getattr(spec, "layers", ())
                 if getattr(layer.attn, "rope", None) is not None), None)


class Engine:
    def __init__(self, model, *, max_batch: int = 8, max_queue: int = 64, context: Optional[int] = None,
                 num_blocks: Optional[int] = None, block_size: int = 16, prefix_cache: bool = True,
                 prefill_budget: Optional[int] = PREFILL_BUDGET, kv_bits: Optional[int] = None,
                 kv_group_size: int = 64, lead=None):
        limit = model_context(model)
        if context is None:
            context = min(limit or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
        if not isinstance(context, int) or context < 2:
            raise ValueError(f"context must be a whole number of tokens >= 2, got {context!r}")
        if getattr(getattr(model, "spec", None), "learned_positions", None) and context > limit:
            raise ValueError(f"context {context} is more than the model's {limit} positions; use at most {limit}")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a whole number >= 1, got {max_batch!r}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        if kv_bits is not None:  # here, not when the engine thread builds the cache: a mistake is the caller's
            check_kv_quantization(model.spec, kv_bits, kv_group_size)
        blocks = lambda tokens: -(-tokens // block_size)  # noqa: E731
        if num_blocks is None:
            num_blocks = max(blocks(context + 1), max_batch * blocks(min(context, BLOCKS_PER_ROW_TOKENS)))
        self.model, self.context, self.max_queue = model, context, max_queue
        # lead: a split model's rank 0 (distributed/follow_engine.Lead) builds the generators, which tell the other
        # ranks each turn, and hears from the engine every `beat` seconds while idle
        self.lead = lead
        self._options = dict(num_blocks=num_blocks, block_size=block_size, max_batch=max_batch,
                             prefix_cache=prefix_cache, prefill_budget=prefill_budget, kv_bits=kv_bits,
                             kv_group_size=kv_group_size)
        mx.eval(model.parameters())  # nothing lazy from this thread may reach the engine's
        self.gen: Optional[BatchGenerator] = None  # built on the engine thread
        self._ready = threading.Event()
        self._failed: Optional[BaseException] = None
        self._cond = threading.Condition()
        self._inbox: List[Tuple[Stream, List[int], SamplingParams]] = []
        self._cancels: List[Stream] = []
        self._closed = False
        self._queued = 0  # submitted and not yet admitted (the inbox and the generator's never-admitted waiting)
        self._uids = itertools.count()
        self._streams: Dict[int, Stream] = {}  # generator uid -> its stream, while open
        self._gids: Dict[int, int] = {}  # stream uid -> generator uid
        self._admitted: set = set()  # generator uids that have produced a token
        self._thread: Optional[threading.Thread] = None
        self._started = time.monotonic()
        self._recent: Deque[Tuple[float, int]] = deque()  # (time, tokens) per step within RATE_WINDOW
        self._done = dict(prompt_tokens_prefilled_total=0, generation_tokens_total=0, preemptions_total=0)
        self._totals = dict(prompt_tokens_total=0, requests_total=0)
        self._snapshot: Dict[str, float] = dict.fromkeys(
            ["running", "waiting", "kv_blocks_used", "kv_blocks_cached", "prefix_hit_tokens",
             "prompt_tokens_prefilled_total", "generation_tokens_total", "preemptions_total"], 0)
        self._snapshot["kv_blocks_free"] = num_blocks

    # ---- any thread
    def start(self) -> None:
        """Start the engine thread; returns once it has built its generator (re-raising what stopped it)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mlxm-engine", daemon=True)
            self._thread.start()
            self._ready.wait()
            if self._failed is not None:
                raise self._failed

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every request and stop the thread (waiting up to `timeout` for the step in flight)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:  # never started (or failed to): queued requests to end
            inbox, self._inbox = self._inbox, []
        for stream, _, _ in inbox:
            stream._put(Event(-1, finish_reason="cancelled"))

    def submit(self, prompt: List[int], params: SamplingParams) -> Stream:
        """Queue a request; ValueError for a prompt that cannot run, QueueFull when max_queue are waiting."""
        o = self._options
        prompt = check_prompt(self.model, prompt, params.max_tokens, o["num_blocks"], o["block_size"])
        if len(prompt) >= self.context:
            raise ValueError(f"the prompt has {len(prompt)} tokens but the context holds {self.context} (prompt "
                             "and reply together); shorten the prompt or raise the context")
        params = replace(params, max_tokens=min(params.max_tokens, self.context - len(prompt)))
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if self._queued >= self.max_queue:
                raise QueueFull(f"{self._queued} requests are already waiting (max_queue {self.max_queue}); "
                                "retry later")
            stream = Stream(next(self._uids), len(prompt), self._cancel)
            self._queued += 1
            self._totals["requests_total"] += 1
            self._totals["prompt_tokens_total"] += len(prompt)
            self._inbox.append((stream, prompt, params))
            self._cond.notify()
        return stream

    def stats(self) -> Dict[str, float]:
        with self._cond:
            out = dict(self._snapshot, **self._totals)
            out["waiting"] += len(self._inbox)  # submitted, not yet handed to the generator
            now = time.monotonic()
            window = min(RATE_WINDOW, now - self._started)
            recent = sum(n for t, n in self._recent if t > now - RATE_WINDOW)
        out["generation_tokens_per_second"] = recent / window if window > 0 else 0.0
        return out

    def _cancel(self, stream: Stream) -> None:
        with self._cond:
            self._cancels.append(stream)
            self._cond.notify()

    # ---- the engine thread
    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self.gen = None  # the pool's memory goes now, not with the process
            # The thread's last MLX call. MLX 0.32 keeps streams and mx.compile traces per thread and frees them
            # when the thread ends, which aborts the process at exit ("terminate called without an active
            # exception", exit 134: 12 of 12 runs of three engines) unless the thread clears them itself
            # (ml-explore/mlx#4327; app/tui.py's _end_mlx_work does the same for the chat's MLX thread).
            mx.synchronize()
            mx.clear_streams()

    def _serve(self) -> None:
        try:
            self.gen = self._generator()
        except BaseException as e:  # noqa: BLE001 - handed to start()
            self._failed = e
            return
        finally:
            self._ready.set()
        while True:
            with self._cond:
                while not (self._inbox or self._cancels or self._closed or not self.gen.idle):
                    if not self._cond.wait(self.lead.beat if self.lead else None):
                        break  # a lead's beat: nothing came in a while
                if self._closed:
                    break
                inbox, self._inbox = self._inbox, []
                cancels, self._cancels = self._cancels, []
            if not (inbox or cancels or not self.gen.idle):
                self.lead.idle()
                continue
            try:
                self._turn(inbox, cancels)
            except Exception as e:  # noqa: BLE001 - any failure ends the open requests, never the engine
                log.exception("engine step failed")
                error = Event(-1, finish_reason="error", error=f"{type(e).__name__}: {e}")
                for stream, _, _ in inbox:  # those it had not added yet
                    stream._put(error)
                self._finish_all(error)
        self._finish_all(Event(-1, finish_reason="cancelled"), rebuild=False)
        if self.lead is not None:
            self.lead.close()

    def _turn(self, inbox: List[Tuple[Stream, List[int], SamplingParams]], cancels: List[Stream]) -> None:
        """New requests join, cancelled ones leave, then one step if anything runs."""
        for stream, prompt, params in inbox:
            gid = self.gen.add(prompt, params=params)
            self._streams[gid], self._gids[stream.uid] = stream, gid
        for stream in cancels:
            self._drop(stream, Event(-1, finish_reason="cancelled"))
        if self.gen.idle:
            self._update_stats()  # cancellations alone changed it
            return
        responses = self.gen.step()
        for r in responses:
            self._deliver(r)
        with self._cond:
            self._recent.append((time.monotonic(), len(responses)))
            while self._recent and self._recent[0][0] < time.monotonic() - RATE_WINDOW:
                self._recent.popleft()
        self._update_stats()

    def _generator(self) -> BatchGenerator:
        if self.lead is not None:  # no interrupt: when a prefill stops must not depend on rank 0's timing
            return self.lead.generator(self.model, self._options)
        return BatchGenerator(self.model, interrupt=self._cancel_pending, **self._options)

    def _cancel_pending(self, gid: int) -> bool:
        """Asked between the chunks of a long prefill: its client has gone, stop feeding the prompt."""
        stream = self._streams.get(gid)
        with self._cond:
            return stream is not None and any(s is stream for s in self._cancels)

    def _deliver(self, r: BatchResponse) -> None:
        stream = self._streams[r.uid]
        if r.uid not in self._admitted:
            self._admitted.add(r.uid)
            stream.cached_tokens = r.cached_tokens or 0
            with self._cond:
                self._queued -= 1
        if r.finish_reason == "stop":  # the stop token is not part of the reply
            stream._put(Event(-1, finish_reason="stop"))
        else:
            stream._put(Event(r.token, r.logprob, r.top_logprobs, r.finish_reason))
        if r.finish_reason:
            self._forget(stream)

    def _drop(self, stream: Stream, event: Event) -> None:
        """End a stream that has not finished: its request leaves the generator."""
        gid = self._gids.get(stream.uid)
        if gid is None:
            return
        self.gen.cancel(gid)
        if gid not in self._admitted:
            with self._cond:
                self._queued -= 1
        stream._put(event)
        self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        gid = self._gids.pop(stream.uid)
        del self._streams[gid]
        self._admitted.discard(gid)

    def _finish_all(self, event: Event, rebuild: bool = True) -> None:
        """End every open stream with `event` and start over with an empty generator (the old one may be broken
        mid-step, so it is not asked to cancel anything)."""
        with self._cond:
            inbox, self._inbox = self._inbox, []
            self._queued = 0
        for stream in list(self._streams.values()) + [s for s, _, _ in inbox]:
            stream._put(event)
        self._streams.clear()
        self._gids.clear()
        self._admitted.clear()
        if rebuild:
            self._fold_counters()
            self.gen = self._generator()
        self._update_stats()

    def _fold_counters(self) -> None:
        """Keep the totals of a generator about to be replaced."""
        gen = self.gen
        for key, value in (("prompt_tokens_prefilled_total", gen.prefilled_tokens),
                           ("generation_tokens_total", gen.generated_tokens), ("preemptions_total", gen.preemptions)):
            self._done[key] += value

    def _update_stats(self) -> None:
        gen, pool = self.gen, self.gen.pool
        snapshot = dict(
            running=len(gen.running), waiting=len(gen.waiting), kv_blocks_used=pool.used_blocks,
            kv_blocks_free=pool.free_blocks, kv_blocks_cached=getattr(pool, "cached_blocks", 0),
            prefix_hit_tokens=getattr(pool, "prefix_hit_tokens", 0),
            prompt_tokens_prefilled_total=self._done["prompt_tokens_prefilled_total"] + gen.prefilled_tokens,
            generation_tokens_total=self._done["generation_tokens_total"] + gen.generated_tokens,
            preemptions_total=self._done["preemptions_total"] + gen.preemptions)
        with self._cond:
            self._snapshot = snapshot
