"""Block bookkeeping for the paged KV cache: which pool blocks each sequence owns, shared by every layer.

A sequence's tokens live in fixed-size blocks of a pool; its block table lists them in token order. Every layer
has its own pool arrays (`paged_cache.py`) but the same block ids, so one `BlockPool` per model decides them.
Forking a sequence shares its blocks (reference counts); a shared block is copied, in every layer, just before
a sequence writes into it (copy on write). A step first checks that the pool has every block it needs and raises
`PoolExhausted` before anything is written, so running out never corrupts a sequence.

A forward pass over the active sequences is one *step*: the first layer reserves blocks for its T tokens per
sequence (`begin`), every layer writes and attends through the same `Step`, and the last layer commits the new
lengths (`layer_done`). Positions (`offsets`) therefore stay those before the step for the whole pass.

With `prefix_cache=True` the pool also remembers which token prefix each full block holds (`prefix_index.py`):
the caller reports the tokens it stored (`commit_tokens`), and a new sequence starts from the longest run of cached
blocks its prompt begins with (`claim_prefix`), prefilling only the rest. A keyed block is never written in place:
a sequence writing into one copies it (when shared) or drops its key (when it is the only holder). Keyed blocks
of freed sequences stay cached, and count as free, until a sequence needs their room (least recently used first).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import mlx.core as mx

from .prefix_index import ROOT, PrefixIndex, block_key, prefix_keys


class PoolExhausted(RuntimeError):
    """The block pool has fewer free blocks than a step needs; nothing was written."""


@dataclass
class Sequence:
    blocks: List[int] = field(default_factory=list)  # pool block ids in token order
    length: int = 0  # tokens stored
    tokens: List[int] = field(default_factory=list)  # with prefix caching: the token ids committed so far
    keys: List[bytes] = field(default_factory=list)  # their full blocks' keys


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
    def __init__(self, num_blocks: int, block_size: int = 16, prefix_cache: bool = False):
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
        self.prefix = PrefixIndex() if prefix_cache else None
        self.prefix_queries = 0  # claim_prefix calls
        self.prefix_query_tokens = 0  # tokens they asked for
        self.prefix_hit_tokens = 0  # tokens they found cached

    # ---- accounting
    @property
    def free_blocks(self) -> int:
        """Blocks a sequence can take: never used, or cached (kept for their prefix but held by no sequence)."""
        return len(self._free) + self.cached_blocks

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - self.free_blocks

    @property
    def cached_blocks(self) -> int:
        return self.prefix.cached if self.prefix is not None else 0

    def _take(self) -> int:
        b = self._free.pop() if self._free else self.prefix.evict()  # blank blocks before cached ones
        self._refs[b] = 1
        return b

    def _release(self, b: int) -> None:
        self._refs[b] -= 1
        if self._refs[b] == 0:
            if self.prefix is not None and self.prefix.keyed(b):
                self.prefix.park(b)
            else:
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
        self.seqs[new] = Sequence(list(src.blocks), src.length, list(src.tokens), list(src.keys))
        for b in src.blocks:
            self._refs[b] += 1
        return new

    def truncate(self, sid: int, length: int) -> None:
        """Keep the first `length` tokens (speculative rollback); blocks past them go back to the pool."""
        s = self._seq(sid)
        if not 0 <= length <= s.length:
            raise ValueError(f"cannot truncate sequence {sid} of {s.length} tokens to {length}")
        keep = -(-length // self.block_size)
        for b in reversed(s.blocks[keep:]):
            self._release(b)
        s.blocks, s.length = s.blocks[:keep], length
        del s.tokens[length:]
        del s.keys[len(s.tokens) // self.block_size:]

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
        for b in reversed(s.blocks):  # a prefix's last blocks become the least recent: evicted before its first
            self._release(b)
        self.active = [a for a in self.active if a != sid]

    # ---- prefix caching
    def claim_prefix(self, sid: int, tokens: List[int]) -> int:
        """Start the empty sequence `sid` with the cached blocks holding the longest block-aligned prefix of
        `tokens`, shared, not copied; returns the tokens reused (its new length: 0 when prefix caching is off or
        nothing matched). The last token is never reused, so the caller's prefill of the rest gives its logits;
        a last block reused in part is copied (or unkeyed) when that token is written."""
        s = self._seq(sid)
        if s.length or s.blocks:
            raise ValueError(f"claim_prefix needs a new, empty sequence; sequence {sid} holds {s.length} tokens")
        if self.prefix is None:
            return 0
        self.prefix_queries += 1
        self.prefix_query_tokens += len(tokens)
        tokens = [int(t) for t in tokens]
        blocks, keys = [], []
        for key in prefix_keys(tokens, self.block_size):
            b = self.prefix.lookup(key)
            if b is None:
                break
            blocks.append(b)
            keys.append(key)
        n = max(0, min(len(blocks) * self.block_size, len(tokens) - 1))
        blocks = blocks[:-(-n // self.block_size)]
        for b in blocks:
            if self._refs[b] == 0:
                self.prefix.unpark(b)
            self._refs[b] += 1
        s.blocks, s.length, s.tokens, s.keys = blocks, n, tokens[:n], keys[:n // self.block_size]
        self.prefix_hit_tokens += n
        return n

    def commit_tokens(self, sid: int, tokens: List[int]) -> None:
        """Record the token ids just stored in `sid` (in order, after those committed before; claimed tokens
        count as committed). Each block they fill becomes keyed by its prefix, for later sequences to claim."""
        if self.prefix is None:
            return
        s = self._seq(sid)
        if len(s.tokens) + len(tokens) > s.length:
            raise ValueError(f"commit_tokens: sequence {sid} stores {s.length} tokens, {len(s.tokens)} committed "
                             f"already, so {len(tokens)} more were not all written; commit after the step")
        s.tokens.extend(int(t) for t in tokens)
        bs = self.block_size
        for i in range(len(s.keys), len(s.tokens) // bs):
            key = block_key(s.keys[-1] if s.keys else ROOT, s.tokens[i * bs:(i + 1) * bs])
            s.keys.append(key)
            self.prefix.add(key, s.blocks[i])

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
            elif self.prefix is not None:  # ours alone: a key it has no longer says what it holds
                self.prefix.drop(old)
        while len(s.blocks) <= last:
            s.blocks.append(self._take())

    def layer_done(self, step: Step, layer_id: int) -> None:
        step.done.add(layer_id)
        if len(step.done) == len(self.layers) and step is self._step:
            for sid in self.active:
                self.seqs[sid].length += step.T
            self._step = None
            self.epoch += 1
