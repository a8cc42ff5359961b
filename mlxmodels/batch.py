"""Continuous batching: many sequences decode together over one paged cache, joining and leaving between steps.

Each `step()` decodes one token for every running sequence in a single forward pass (batch rows at their own
positions), then admits waiting requests while there is room: the newcomers are prefilled together (one forward
pass per round, batch_prefill.py) and emit their first token in the same step. A sequence that ends (a stop token
or its token budget) frees its blocks at once, so the next waiting request can use them.

Each request samples with its own settings (`SamplingParams`: temperature, top-k/p, min-p, seed, penalties,
logprobs; see row_sampling.py); without them it is greedy. `cancel(uid)` drops a request, waiting or running;
`interrupt(uid)`, asked between the chunks of a long prefill, drops one whose prefill is under way.

Each step decodes the running sequences first, then admits newcomers. `prefill_budget` bounds the prompt tokens
one step prefills (a longer prompt still goes, alone): a burst of long prompts is admitted over several steps, so
the first ones get their first token without waiting for all the others' prefill, and running sequences keep
decoding in between.

Admission keeps one free block per running sequence, so the next decode step usually fits. If the pool still
runs out (long generations), the most recently admitted sequence is preempted: its blocks are freed and it goes
back to the front of the queue with everything it has emitted, to be prefilled again later (recomputation, as in
vLLM). Greedy output is therefore the same as decoding each prompt alone.

`kv_bits=4|8` (with `kv_group_size`) keeps the pool's blocks quantized (parts/paged_quantized.py): about 3.6x/1.9x
the tokens of a float16 pool in the same memory (at group size 64), at a small cost in accuracy.

Decode steps are pipelined (`pipeline=True`): the next step is built on this step's tokens before they are read,
so the device computes it while Python hands out tokens and admits newcomers. A row that then draws a stop token
wastes that step (its output is dropped), rows whose budget ends sit it out, newcomers join the step after, and a
request with a penalty (which needs its tokens) or a short pool makes the step wait. Outputs do not change.

With `prefix_cache=True` the pool keys every full block by the tokens up to its end (block_pool.py): a request
starts from the cached blocks its prompt begins with and prefills only the rest, and admission counts only the
blocks still needed. Every step reports the tokens it stored (`commit_tokens`), generated ones included, so the
next turn of a chat finds its whole history cached, and a preempted request its own blocks.

    gen = BatchGenerator(model, num_blocks=1024, max_batch=8)
    uids = [gen.add(p, max_tokens=64) for p in prompts]
    for responses in gen:            # one list per step
        for r in responses: ...      # r.uid, r.token, r.finish_reason
"""

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import mlx.core as mx

from .batch_prefill import pad_limit, pass_tokens, prefill_together
from .parts.block_pool import PoolExhausted
from .row_sampling import Draw, RowSampler, SamplingParams
from .vocab import check_ids


@dataclass
class BatchResponse:
    uid: int
    token: int
    finish_reason: Optional[str] = None  # None | "stop" (a stop token, which is included) | "length"
    logprob: Optional[float] = None  # when the request asked for logprobs
    top_logprobs: Optional[List[Tuple[int, float]]] = None
    cached_tokens: Optional[int] = None  # on a request's first token: prompt tokens it found in the cache


@dataclass
class _Request:
    uid: int
    prompt: List[int]
    params: SamplingParams
    rows: RowSampler
    tokens: List[int] = field(default_factory=list)  # emitted so far
    seq: Optional[int] = None  # its sequence in the pool while running
    cached_tokens: Optional[int] = None  # set at its first admission


def check_prompt(model, prompt: Sequence[int], max_tokens: int, num_blocks: int, block_size: int) -> List[int]:
    """The prompt as a list of ints, or ValueError if it can never run in a pool of num_blocks x block_size; Python
    only (no MLX arrays), so any thread may call it."""
    prompt = [int(t) for t in prompt]
    if not prompt or max_tokens < 1:
        raise ValueError(f"need a non-empty prompt and max_tokens >= 1, got {len(prompt)} tokens, {max_tokens}")
    check_ids(prompt, model)  # here, not at its prefill: one bad prompt must not fail a step
    need = -(-(len(prompt) + 1) // block_size)  # the prompt and the first generated token
    if need > num_blocks:
        raise ValueError(f"a prompt of {len(prompt)} tokens needs {need} blocks but the pool has {num_blocks}; "
                         "make the generator with more blocks")
    return prompt


class BatchGenerator:
    def __init__(self, model, num_blocks: int = 1024, block_size: int = 16, max_batch: int = 16,
                 prefill_step_size: int = 512, stop_tokens: Iterable[int] = (), prefix_cache: bool = False,
                 interrupt: Optional[Callable[[int], bool]] = None, prefill_budget: Optional[int] = None,
                 pipeline: bool = True, kv_bits: Optional[int] = None, kv_group_size: int = 64,
                 share: Optional[Callable[[mx.array], mx.array]] = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.cache = model.make_cache(paged=True, num_blocks=num_blocks, block_size=block_size,
                                      prefix_cache=prefix_cache, kv_bits=kv_bits, kv_group_size=kv_group_size)
        self.pool = self.cache.pool
        self.pool.free(self.pool.active[0])  # make_cache's default sequence: ours come from add()
        self.max_batch, self.prefill_step_size = max_batch, prefill_step_size
        self.interrupt = interrupt  # interrupt(uid) -> True: drop that request between its prefill's chunks
        self.prefill_budget = prefill_budget  # prompt tokens one step prefills before it stops admitting (None: all)
        self.pipeline = pipeline
        self.share = share  # the drawn tokens (B,) -> those every rank feeds (row_sampling.Draw); None: our own
        self._ahead: Optional[Tuple[List[_Request], Draw]] = None  # the next decode step, already queued
        self.steps_ahead = 0  # decode steps queued before the previous one was read
        self.stop_tokens = frozenset(stop_tokens)
        self.waiting: Deque[_Request] = deque()
        self.running: List[_Request] = []
        self.preemptions = 0
        self.prompt_tokens = 0  # of the prompts added
        self.prefilled_tokens = 0  # run through prefill: prompts less what the cache held, and recomputation
        self.generated_tokens = 0
        self._next_uid = 0

    def add(self, prompt: Sequence[int], max_tokens: int = 256, stop_tokens: Optional[Iterable[int]] = None,
            params: Optional[SamplingParams] = None) -> int:
        """Queue a prompt (token ids); returns its uid. It joins the batch at a later step. `params` (sampling,
        max_tokens, stop tokens) replace the greedy default made from max_tokens and stop_tokens."""
        if params is None:
            stop = self.stop_tokens if stop_tokens is None else frozenset(stop_tokens)
            params = SamplingParams(max_tokens, temperature=0.0, stop_tokens=stop) if max_tokens >= 1 else None
        prompt = check_prompt(self.model, prompt, params.max_tokens if params else max_tokens, self.pool.num_blocks,
                              self.pool.block_size)
        uid = self._next_uid
        self._next_uid += 1
        self.waiting.append(_Request(uid, prompt, params, RowSampler(params, prompt)))
        self.prompt_tokens += len(prompt)
        return uid

    def cancel(self, uid: int) -> bool:
        """Drop a waiting or running request (its blocks go back at once); False if it is not here (finished)."""
        for r in self.waiting:
            if r.uid == uid:
                self.waiting.remove(r)
                return True
        for r in self.running:
            if r.uid == uid:
                self.pool.free(r.seq)
                self.running.remove(r)
                return True
        return False

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self.pool.block_size)

    def _emit(self, batch: List[_Request], draw: Draw, out: List[BatchResponse]) -> None:
        """Hand out the tokens drawn for `batch`; requests that left meanwhile are skipped, finished ones leave."""
        for r, d in zip(batch, draw.read()):
            if r not in self.running:  # cancelled, or ended by a stop token, after its step was queued
                continue
            first = not r.tokens
            r.tokens.append(d.token)
            stop = d.token in r.params.stop_tokens
            finish = "stop" if stop else "length" if len(r.tokens) == r.params.max_tokens else None
            out.append(BatchResponse(r.uid, d.token, finish, d.logprob, d.top_logprobs,
                                     r.cached_tokens if first else None))
            self.generated_tokens += 1
            if finish:
                self.pool.free(r.seq)
                self.running.remove(r)

    def _forward(self, batch: List[_Request], y: mx.array) -> Draw:
        """One decode step of `batch` on its last tokens y (B, 1), queued, not evaluated."""
        self.pool.active = [r.seq for r in batch]
        return Draw([r.rows for r in batch], self.model(y, cache=self.cache)[:, -1, :], self.share)

    def _preempt(self) -> None:
        r = self.running.pop()  # the most recently admitted
        self.pool.free(r.seq)
        r.seq = None
        self.waiting.appendleft(r)
        self.preemptions += 1

    def _decode(self, out: List[BatchResponse]) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None and not any(r in self.running for r in ahead[0]):
            ahead = None  # everyone it was queued for has left
        while ahead is None and self.running:
            batch = list(self.running)
            y = mx.array([[r.tokens[-1]] for r in batch], mx.int32)  # (B, 1): each row's last token
            try:
                ahead = batch, self._forward(batch, y)
            except PoolExhausted:
                if len(batch) == 1:
                    raise
                self._preempt()
        if ahead is None:
            return
        batch, draw = ahead
        if self.pipeline:
            self._queue_next(batch, draw)
        for r in batch:  # what this step stored, before finished sequences leave the pool
            if r in self.running:
                self.pool.commit_tokens(r.seq, r.tokens[-1:])
        self._emit(batch, draw, out)

    def _queue_next(self, batch: List[_Request], draw: Draw) -> None:
        """Build the next decode step on this step's tokens before they are read, so that the device computes it
        while Python reads, hands out and admits (as generate_step does for one sequence). Rows whose budget ends
        with this token sit it out; a row that draws a stop token wastes one step, whose output is dropped. Not
        when a penalty needs this step's tokens, or when the pool is short (the next step preempts instead)."""
        going = [i for i, r in enumerate(batch) if r in self.running and len(r.tokens) + 1 < r.params.max_tokens]
        newer = [r for r in self.running if r not in batch]  # admitted since `batch` was queued: tokens known
        rows = [batch[i] for i in going] + newer
        if not rows or any(r.rows.needs_history for r in rows):
            return
        y = mx.array([r.tokens[-1] for r in newer], mx.int32)
        y = mx.concatenate([draw.tokens[mx.array(going, mx.int32)], y])[:, None] if going else y[:, None]  # (B, 1)
        try:
            nxt = self._forward(rows, y)
        except PoolExhausted:
            return
        mx.async_eval(*nxt.arrays)
        self._ahead = rows, nxt
        self.steps_ahead += 1

    def _admit(self, out: List[BatchResponse]) -> None:
        """Admit waiting requests while there is room, then prefill them together (batch_prefill.py)."""
        group: List[Tuple[_Request, List[int]]] = []  # each newcomer and the tokens it has to prefill
        spent = pending = 0  # their tokens, and blocks they will take
        while self.waiting and len(self.running) < self.max_batch and spent < (self.prefill_budget or spent + 1):
            r = self.waiting[0]
            context = r.prompt + r.tokens  # a preempted request resumes after what it emitted
            seq = self.pool.add_sequence()
            reused = self._claim(seq, context, pending)
            if reused is None:
                self.pool.free(seq)
                if not self.running:
                    raise PoolExhausted(f"request {r.uid} needs {self._blocks(len(context) + 1)} blocks and only "
                                        f"{self.pool.free_blocks} are free with nothing running")
                break
            self.waiting.popleft()
            r.seq = seq
            self.running.append(r)
            if r.cached_tokens is None:
                r.cached_tokens = reused
            group.append((r, context[reused:]))
            spent += len(context) - reused
            pending += self._blocks(len(context) + 1) - reused // self.pool.block_size
        if not group:
            return
        keep = None if self.interrupt is None else (lambda i: not self.interrupt(group[i][0].uid))
        finished, logits = prefill_together(self.model, self.cache, [r.seq for r, _ in group],
                                            [todo for _, todo in group], self.prefill_step_size, keep, pad_limit(),
                                            pass_tokens())
        for i, (r, todo) in enumerate(group):
            if i in finished:
                self.pool.commit_tokens(r.seq, todo)
                self.prefilled_tokens += len(todo)
            else:  # its client left while a long prompt was being fed: it leaves without a token
                self.pool.free(r.seq)
                self.running.remove(r)
        if finished:
            rows = [group[i][0] for i in finished]
            self._emit(rows, Draw([r.rows for r in rows], logits, self.share), out)

    def _claim(self, seq: int, context: List[int], pending: int = 0) -> Optional[int]:
        """Share the cached blocks `context` starts with into the empty `seq`: the tokens reused, or None when
        the blocks still needed (and one per running sequence, for its next token, and `pending` for the
        newcomers of this step) are not free."""
        room = self.pool.free_blocks - len(self.running) - pending
        if self._blocks(len(context) + 1) <= room:
            return self.pool.claim_prefix(seq, context)  # room even with no hit: claimed cached blocks were free
        reused = self.pool.claim_prefix(seq, context)  # claiming takes them out of the free count
        need = self._blocks(len(context) + 1) - reused // self.pool.block_size  # a partly reused block is copied
        return reused if need <= self.pool.free_blocks - len(self.running) - pending else None

    def step(self) -> List[BatchResponse]:
        """One token for every running sequence, then prefill newcomers (their first token)."""
        out: List[BatchResponse] = []
        self._decode(out)
        self._admit(out)
        return out

    def __iter__(self) -> Iterator[List[BatchResponse]]:
        while not self.idle:
            yield self.step()


def generate_batch(model, prompts: Sequence[Sequence[int]], max_tokens: int = 64, **options) -> List[List[int]]:
    """Token ids generated for each prompt, decoded together (options: BatchGenerator's)."""
    gen = BatchGenerator(model, **options)
    uids = [gen.add(p, max_tokens) for p in prompts]
    tokens: Dict[int, List[int]] = {u: [] for u in uids}
    for responses in gen:
        for r in responses:
            tokens[r.uid].append(r.token)
    return [tokens[u] for u in uids]
