"""Block bookkeeping for the paged KV cache: which pool blocks each sequence owns, shared by every layer.

A sequence's tokens live in fixed-size blocks of a pool; its block table lists them in token order. Every layer
has its own pool arrays (`paged_cache.py`) but the same block ids, so one `BlockPool` per model decides them.
Forking a sequence shares its blocks (reference counts); a shared block is copied, in every layer, just before
a sequence writes into it (copy on write). A step first checks that the pool has every block it needs and raises
`PoolExhausted` before anything is written, so running out never corrupts a sequence.

A forward pass over the active sequences is one *step*: the first layer reserves blocks for its T tokens per
sequence (`begin`), every layer writes and attends through the same `Step`, and the last layer commits the new
lengths (`layer_done`). Positions (`offsets`) therefore stay those before the step for the whole pass.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import mlx.core as mx


class PoolExhausted(RuntimeError):
    """The block pool has fewer free blocks than a step needs; nothing was written."""


@dataclass
class Sequence:
    blocks: List[int] = field(default_factory=list)  # pool block ids in token order
    length: int = 0  # tokens stored


@dataclass
class Step:
    """What every layer of one forward pass needs: where to write and what to read."""

    T: int
    blocks: mx.array  # (B * T,) pool block of each new token, batch-major
    rows: mx.array  # (B * T,) row inside that block
    tables: mx.array  # (B, max_blocks) int32, padded with block 0 (never read: masked or past the length)
    lengths: List[int]  # tokens per sequence before the step
    context_lens: mx.array  # (B,) int32, tokens per sequence after the step
    seqs: List[int] = field(default_factory=list)  # the active sequences it was made for
    done: set = field(default_factory=set)  # ids of the layers that have run


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int = 16):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"a block pool needs >= 1 block of >= 1 token, got {num_blocks} x {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: low ids first
        self._refs = [0] * num_blocks
        self.seqs: Dict[int, Sequence] = {}
        self.active: List[int] = []  # the sequence of each batch row in the next forward pass
        self.layers: list = []  # the layer caches, for copy on write
        self.epoch = 0  # completed steps
        self._trim_round = None  # (epoch, requested n, trimmed n, layers that called) while layers trim in turn
        self._next_id = 0
        self._step: Optional[Step] = None

    # ---- accounting
    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def _take(self) -> int:
        b = self._free.pop()
        self._refs[b] = 1
        return b

    def _release(self, b: int) -> None:
        self._refs[b] -= 1
        if self._refs[b] == 0:
            self._free.append(b)

    # ---- sequences
    def add_sequence(self) -> int:
        sid = self._next_id
        self._next_id += 1
        self.seqs[sid] = Sequence()
        return sid

    def length(self, sid: int) -> int:
        return self._seq(sid).length

    def fork(self, sid: int) -> int:
        """A new sequence sharing every block of `sid` (regenerate, branches, prefix reuse); no data is copied."""
        src = self._seq(sid)
        new = self.add_sequence()
        self.seqs[new] = Sequence(list(src.blocks), src.length)
        for b in src.blocks:
            self._refs[b] += 1
        return new

    def truncate(self, sid: int, length: int) -> None:
        """Keep the first `length` tokens (speculative rollback); blocks past them go back to the pool."""
        s = self._seq(sid)
        if not 0 <= length <= s.length:
            raise ValueError(f"cannot truncate sequence {sid} of {s.length} tokens to {length}")
        keep = -(-length // self.block_size)
        for b in s.blocks[keep:]:
            self._release(b)
        s.blocks, s.length = s.blocks[:keep], length

    def trim(self, layer_id: int, n: int) -> int:
        """Roll the active sequences back n tokens once per round of per-layer calls (each layer cache's `trim`
        lands here, as mlx-lm-style callers trim every layer); returns the tokens forgotten."""
        r = self._trim_round
        if r is None or r[0] != self.epoch or r[1] != n or layer_id in r[3]:
            done = min([n] + [self._seq(s).length for s in self.active])
            for s in self.active:
                self.truncate(s, self._seq(s).length - done)
            r = self._trim_round = (self.epoch, n, done, set())
        r[3].add(layer_id)
        if len(r[3]) == len(self.layers):
            self._trim_round = None
        return r[2]

    def free(self, sid: int) -> None:
        """Forget a sequence; its blocks return to the pool unless another sequence shares them."""
        s = self.seqs.pop(sid)
        for b in s.blocks:
            self._release(b)
        self.active = [a for a in self.active if a != sid]

    def _seq(self, sid: int) -> Sequence:
        if sid not in self.seqs:
            raise KeyError(f"no sequence {sid} in this block pool (freed already?)")
        return self.seqs[sid]

    # ---- steps
    def offsets(self):
        """Positions of the next token per active sequence: an int for one sequence, else an int32 array (B,)."""
        lengths = [self._seq(s).length for s in self.active]
        return lengths[0] if len(lengths) == 1 else mx.array(lengths, mx.int32)

    def _needed(self, s: Sequence, T: int) -> int:
        first, last = s.length // self.block_size, (s.length + T - 1) // self.block_size
        fresh = max(0, last + 1 - len(s.blocks))
        shared = sum(self._refs[s.blocks[i]] > 1 for i in range(first, min(last + 1, len(s.blocks))))
        return fresh + shared

    def begin(self, T: int, layer_id: int) -> Step:
        """The step this layer belongs to: reserved on the first layer of a forward pass of T tokens per sequence."""
        step = self._step
        if step is not None and step.T == T and layer_id not in step.done and step.seqs == self.active:
            return step  # a later layer of the same forward pass (an abandoned pass is simply replaced)
        if not self.active:
            raise RuntimeError("no active sequence: add one (pool.add_sequence) and set pool.active")
        seqs = [self._seq(s) for s in self.active]
        needed = sum(self._needed(s, T) for s in seqs)
        if needed > self.free_blocks:
            raise PoolExhausted(
                f"the KV block pool is full: this step needs {needed} more blocks of {self.block_size} tokens but "
                f"{self.free_blocks} of {self.num_blocks} are free; free finished sequences or make the cache "
                f"with more blocks (num_blocks=...)")
        blocks, rows = [], []
        for s in seqs:
            self._reserve(s, T)
            for p in range(s.length, s.length + T):
                blocks.append(s.blocks[p // self.block_size])
                rows.append(p % self.block_size)
        width = max(len(s.blocks) for s in seqs)
        tables = [s.blocks + [0] * (width - len(s.blocks)) for s in seqs]
        self._step = Step(T, mx.array(blocks, mx.int32), mx.array(rows, mx.int32), mx.array(tables, mx.int32),
                          [s.length for s in seqs], mx.array([s.length + T for s in seqs], mx.int32),
                          list(self.active))
        return self._step

    def _reserve(self, s: Sequence, T: int) -> None:
        first, last = s.length // self.block_size, (s.length + T - 1) // self.block_size
        for i in range(first, min(last + 1, len(s.blocks))):
            old = s.blocks[i]
            if self._refs[old] > 1:  # shared: this sequence gets its own copy before writing
                new = self._take()
                for layer in self.layers:
                    layer.copy_block(old, new)
                self._release(old)
                s.blocks[i] = new
        while len(s.blocks) <= last:
            s.blocks.append(self._take())

    def layer_done(self, step: Step, layer_id: int) -> None:
        step.done.add(layer_id)
        if len(step.done) == len(self.layers) and step is self._step:
            for sid in self.active:
                self.seqs[sid].length += step.T
            self._step = None
            self.epoch += 1
