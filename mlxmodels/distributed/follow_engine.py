"""The serving engine on a split model: rank 0's engine thread leads, every other rank replays its generator.

A BatchGenerator makes its model calls (and so the collectives inside them) from what was added, cancelled and
stepped, and from the tokens drawn. So rank 0's generator is wrapped (`Lead.generator`): each add and cancel is
recorded, and before each step the records go to every rank as one int32 message (follow.share_tokens), ending
with STEP; a follower (`follow`) applies the same operations to a generator built with the same options and steps
it. The tokens drawn are rank 0's on every rank (the generator's `share` hook), so the
followers' requests finish, stop and get preempted exactly where rank 0's do.

While the server is idle rank 0 sends an empty message every `beat` seconds, so a follower never waits on a
collective for longer than that unless a rank is lost (the watchdog then ends it); the engine's close sends
SHUTDOWN and every rank leaves after one last all_sum (no rank closes its sockets under a peer still running the
step queued ahead). A cancelled request's prefill is not cut between chunks here (the engine's `interrupt` reads
rank 0's clock-dependent state, which the followers cannot see): it is dropped at the next turn instead.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import mlx.core as mx
import numpy as np

from ..batch import BatchGenerator
from ..row_sampling import SamplingParams
from .follow import share_tokens

BUILD, ADD, CANCEL, STEP, SHUTDOWN = 1, 2, 3, 4, 5
BEAT = 1.0  # seconds between idle messages: the longest a follower waits on a collective while nothing runs
FLOATS = ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty")
INTS = ("max_tokens", "top_k", "top_logprobs")
OPTIONS = ("num_blocks", "block_size", "max_batch", "prefix_cache", "prefill_budget", "kv_bits", "kv_group_size")


def encode_options(options: dict) -> List[int]:
    """The generator's options as ints (None as -1: every option that may be None is otherwise >= 0)."""
    return [BUILD] + [-1 if options[k] is None else int(options[k]) for k in OPTIONS]


def encode_add(prompt: List[int], params: SamplingParams) -> List[int]:
    """A request as ints: its prompt, its settings (floats as the two words of their float64, so they arrive
    exact), its seed (none, or two words), logprobs, stop ids."""
    floats = np.array([getattr(params, k) for k in FLOATS], np.float64).view(np.int32).tolist()
    seed = [0, 0, 0] if params.seed is None else [1, *np.array([params.seed], np.uint64).view(np.int32).tolist()]
    stops = sorted(params.stop_tokens)
    return [ADD, len(prompt), *prompt, *[getattr(params, k) for k in INTS], *floats, *seed, int(params.logprobs),
            len(stops), *stops]


def decode(message: List[int]) -> Iterator[Tuple]:
    """(BUILD, options) | (ADD, prompt, params) | (CANCEL, uid) | (STEP,) | (SHUTDOWN,) for each operation."""
    i = 0
    while i < len(message):
        kind = message[i]
        if kind == BUILD:
            values = message[i + 1: i + 1 + len(OPTIONS)]
            options = {k: (None if v == -1 else v) for k, v in zip(OPTIONS, values)}
            options["prefix_cache"] = bool(options["prefix_cache"])
            yield BUILD, options
            i += 1 + len(OPTIONS)
        elif kind == ADD:
            n = message[i + 1]
            prompt, i = message[i + 2: i + 2 + n], i + 2 + n
            ints, i = dict(zip(INTS, message[i: i + len(INTS)])), i + len(INTS)
            words, i = message[i: i + 2 * len(FLOATS)], i + 2 * len(FLOATS)
            floats = dict(zip(FLOATS, np.array(words, np.int32).view(np.float64).tolist()))
            has_seed, seed_words, i = message[i], message[i + 1: i + 3], i + 3
            seed = int(np.array(seed_words, np.int32).view(np.uint64)[0]) if has_seed else None
            logprobs, n_stops = bool(message[i]), message[i + 1]
            stops, i = frozenset(message[i + 2: i + 2 + n_stops]), i + 2 + n_stops
            yield ADD, prompt, SamplingParams(**ints, **floats, seed=seed, logprobs=logprobs, stop_tokens=stops)
        elif kind == CANCEL:
            yield CANCEL, message[i + 1]
            i += 2
        elif kind in (STEP, SHUTDOWN):
            yield (kind,)
            i += 1
        else:
            raise ValueError(f"a follower got operation {kind} it does not know: the ranks run different versions")


def share(group, tokens: mx.array) -> mx.array:
    """rank 0's drawn tokens (B,) on every rank. A follower adds `tokens * 0`, not fresh zeros as follow.from_leader
    does: zeros depend on nothing, so a follower could run this all_sum before the step's own collectives (the
    forward pass's) while rank 0 runs it after them, and both would wait forever (seen in a prefill's first step)."""
    mine = tokens if group.rank() == 0 else tokens * 0  # ints: no NaN to carry
    return mx.distributed.all_sum(mine, group=group)


def barrier(group) -> None:
    """One last all_sum, evaluated after whatever this rank still has queued (the step built ahead)."""
    mx.eval(mx.distributed.all_sum(mx.zeros((1,)), group=group))


class Lead:
    """Rank 0's side, given to the Engine (`lead=`): it builds the engine's generators and tells the followers
    everything they need to replay them. `pet` is called after each message (the watchdog's progress); `lost(e)`
    is called with a RuntimeError from a collective and may end the process (a rank went away) or return, to
    let the error go on."""

    beat = BEAT

    def __init__(self, group, pet: Callable[[], None] = lambda: None,
                 lost: Callable[[RuntimeError], None] = lambda e: None):
        self.group, self.pet, self.lost = group, pet, lost
        self.pending: List[int] = []  # operations applied since the last message

    def generator(self, model, options: Dict) -> "Recorder":
        gen = BatchGenerator(model, share=partial(share, self.group), **options)
        self.pending += encode_options(options)
        return Recorder(gen, self)

    def send(self, *tail: int) -> None:
        message, self.pending = self.pending + list(tail), []
        self.guarded(share_tokens, self.group, message)
        self.pet()

    def idle(self) -> None:
        """Nothing to run: an (otherwise empty) message to keep the followers' wait short."""
        self.send()

    def close(self) -> None:
        self.send(SHUTDOWN)
        self.guarded(barrier, self.group)

    def guarded(self, call: Callable, *args):
        try:
            return call(*args)
        except RuntimeError as e:
            self.lost(e)
            raise


class Recorder:
    """A BatchGenerator whose adds and cancels are recorded for the followers and whose step first sends them."""

    def __init__(self, gen: BatchGenerator, lead: Lead):
        self.gen, self.lead = gen, lead

    def add(self, prompt: List[int], params: SamplingParams) -> int:
        uid = self.gen.add(prompt, params=params)
        self.lead.pending += encode_add(list(prompt), params)
        return uid

    def cancel(self, uid: int) -> bool:
        self.lead.pending += [CANCEL, uid]
        return self.gen.cancel(uid)

    def step(self):
        self.lead.send(STEP)
        return self.lead.guarded(self.gen.step)

    def __getattr__(self, name):  # idle, running, waiting, pool and the counters, as the engine reads them
        return getattr(self.gen, name)


def follow(group, model, pet: Callable[[], None] = lambda: None,
           lost: Callable[[Exception], None] = lambda e: None) -> None:
    """A follower's engine: replay rank 0's operations until SHUTDOWN. `pet` after each message. A step that fails
    failed on rank 0 too (the same operations on the same tokens): as rank 0's engine does, the follower goes on,
    and the new generator rank 0 builds arrives with the next message; `lost(e)` first, which may end the process
    (a rank went away)."""
    gen: Optional[BatchGenerator] = None
    while True:
        message = share_tokens(group, [])
        pet()
        for op in decode(message):
            if op[0] == BUILD:
                gen = BatchGenerator(model, share=partial(share, group), **op[1])
            elif op[0] == ADD:
                gen.add(op[1], params=op[2])
            elif op[0] == CANCEL:
                gen.cancel(op[1])
            elif op[0] == STEP:
                try:
                    gen.step()
                except Exception as e:  # noqa: BLE001 - rank 0's engine ends its open requests and rebuilds
                    lost(e)
            else:
                barrier(group)
                return
