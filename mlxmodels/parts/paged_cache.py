"""Paged KV caches: per layer a block pool, per sequence a block table (kept by a shared `BlockPool`).

`PagedKVCache` holds keys and values as (num_blocks, block_size, n_kv, head_dim); `PagedLatentCache` holds MLA's
rows [latent | rope key] as (num_blocks, block_size, kv_lora_rank + rope_dim). A forward pass runs over the
pool's active sequences (one batch row each, at its own position: `offset` is an int for one sequence and an
int32 array (B,) for several). Decode (one token per sequence) goes through `metal_kernels.paged_attention` /
`paged_mla` (our Metal kernel where the dispatch picks it, MLX ops elsewhere); a multi-token step (prefill,
speculative verification) gathers the sequence's blocks and attends with an explicit mask.

    cache = model.make_cache(paged=True, num_blocks=512, block_size=16)
    cache.pool.active -> [sequence id]; cache.pool.fork(sid), .truncate(sid, n), .free(sid), .free_blocks

    cache = model.make_cache(paged=True, num_blocks=512, kv_bits=8)  # quantized blocks: paged_quantized.py

    cache = model.make_cache(paged=True, num_blocks=512, prefix_cache=True)
    n = cache.pool.claim_prefix(sid, prompt)  # reuse cached blocks; prefill prompt[n:], then
    cache.pool.commit_tokens(sid, prompt[n:])  # so that later prompts can reuse these blocks
"""

from typing import List, Optional

import mlx.core as mx

import metal_kernels

from ..spec import AttnSpec, MLASpec, ModelSpec
from .block_pool import BlockPool, PoolExhausted, Step
from .cache import Cache, window_mask
from .sdpa import attend

__all__ = ["BlockPool", "PagedCaches", "PagedKVCache", "PagedLatentCache", "PoolExhausted", "make_paged_cache"]


class _PagedLayer(Cache):
    """What both paged caches share: the pool link, positions, rollback and block copies."""

    def __init__(self, pool: BlockPool):
        self.pool = pool
        self.layer_id = len(pool.layers)
        pool.layers.append(self)

    @property
    def offset(self):
        return self.pool.offsets()

    def trim(self, n: int) -> int:
        """Forget the last n tokens of every active sequence (speculative rollback). Callers trim every layer;
        the pool acts on the first call of such a round, as all layers share the block tables."""
        return self.pool.trim(self.layer_id, n)

    def _arrays(self) -> list:  # the pool arrays of this layer (None until the first write)
        raise NotImplementedError

    def copy_block(self, src: int, dst: int) -> None:
        for a in self._arrays():
            if a is not None:
                a[dst] = a[src]

    @property
    def state(self):
        return tuple(a for a in self._arrays() if a is not None)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.state)

    def _visible(self, step: Step, S: int, window=None, chunk=None) -> List[mx.array]:
        """Per batch row, the (T, S) mask of its new queries over the S gathered key positions."""
        return [window_mask(n, step.T, 0, S, window, chunk) for n in step.lengths]


class PagedKVCache(_PagedLayer):
    def __init__(self, pool: BlockPool, attn: AttnSpec):
        super().__init__(pool)
        self.n_kv = attn.n_kv_heads
        self.window, self.chunk = attn.window, attn.chunk
        self.keys: Optional[mx.array] = None  # (num_blocks, block_size, n_kv, head_dim)
        self.values: Optional[mx.array] = None

    def _arrays(self) -> list:
        return [self.keys, self.values]

    def _store(self, step: Step, k, v) -> None:
        # k, v: (B * T, n_kv, D) in step order
        if self.keys is None:
            shape = (self.pool.num_blocks, self.pool.block_size, self.n_kv)
            self.keys = mx.zeros((*shape, k.shape[-1]), k.dtype)
            self.values = mx.zeros((*shape, v.shape[-1]), v.dtype)
        self.keys[step.blocks, step.rows] = k
        self.values[step.blocks, step.rows] = v

    def _decode_blocks(self, tables):
        """What a decode step's kernel reads: float key and value blocks, and the tables into them."""
        return self.keys, self.values, tables

    def _gather(self, tables):
        """Keys and values of the sequences in `tables` (B, max_blocks) -> two (B, S, n_kv, D), token order."""
        return (metal_kernels.reference.gather_blocks(self.keys, tables),
                metal_kernels.reference.gather_blocks(self.values, tables))

    def attend(self, q, k, v, scale: float, softcap=None):
        # q: (B, H, T, D); k, v: (B, n_kv, T, D) for the T new tokens of each active sequence
        B, _, T, _ = q.shape
        step = self.pool.begin(T, self.layer_id)
        self._store(step, k.transpose(0, 2, 1, 3).reshape(B * T, self.n_kv, -1),
                    v.transpose(0, 2, 1, 3).reshape(B * T, self.n_kv, -1))
        if T == 1:
            keys, values, tables = self._decode_blocks(step.tables)
            out = metal_kernels.paged_attention(q[:, :, 0], keys, values, tables, step.context_lens,
                                                scale, softcap, self.window, self.chunk)[:, :, None]
        else:
            keys, values = (a.transpose(0, 2, 1, 3) for a in self._gather(step.tables))  # (B, n_kv, S, D)
            masks = self._visible(step, keys.shape[2], self.window, self.chunk)
            out = mx.concatenate([attend(q[b:b + 1], keys[b:b + 1], values[b:b + 1], scale, masks[b], softcap)
                                  for b in range(B)])
        self.pool.layer_done(step, self.layer_id)
        return out


class PagedLatentCache(_PagedLayer):
    """MLA's paged cache: one row [latent (R) | rope key (P)] per token, shared by all heads.

    Speaks the MLA part's cache protocol: `attend(q, rows, None, scale)` for the absorbed form (q: (B, H, T, R + P)
    = [q_nope W_UK | q_rope], rows: (B, 1, T, R + P)) -> (B, H, T, R), and `mask(T)` then `update_and_fetch(rows)`
    -> (B, 1, S, R + P) for the expanded prefill.
    """

    def __init__(self, pool: BlockPool, kv_lora_rank: int):
        super().__init__(pool)
        self.rank = kv_lora_rank
        self.rows: Optional[mx.array] = None  # (num_blocks, block_size, R + P)

    def _arrays(self) -> list:
        return [self.rows]

    def _write(self, rows) -> Step:
        B, _, T, F = rows.shape
        step = self.pool.begin(T, self.layer_id)
        self._store(step, rows.reshape(B * T, F))
        return step

    def _store(self, step: Step, rows) -> None:
        # rows: (B * T, R + P) in step order
        if self.rows is None:
            self.rows = mx.zeros((self.pool.num_blocks, self.pool.block_size, rows.shape[-1]), rows.dtype)
        self.rows[step.blocks, step.rows] = rows

    def _decode_blocks(self, tables):
        """What a decode step's kernel reads: float row blocks, and the tables into them."""
        return self.rows, tables

    def _gather(self, tables):
        """The rows of the sequences in `tables` (B, max_blocks) -> (B, S, R + P), token order."""
        return metal_kernels.reference.gather_blocks(self.rows, tables)

    def mask(self, T: int):
        """The expanded path's mask over the rows `update_and_fetch` returns: (T, S), or (B, 1, T, S)."""
        step = self.pool.begin(T, self.layer_id)
        masks = self._visible(step, step.tables.shape[1] * self.pool.block_size)
        return masks[0] if len(masks) == 1 else mx.stack(masks)[:, None]

    def update_and_fetch(self, rows):
        step = self._write(rows)
        out = self._gather(step.tables)[:, None]  # (B, 1, S, R + P)
        self.pool.layer_done(step, self.layer_id)
        return out

    def attend(self, q, rows, _values, scale: float, softcap=None):
        # q: (B, H, T, R + P) absorbed queries; rows: (B, 1, T, R + P) this step's latent rows
        B, H, T, _ = q.shape
        step = self._write(rows)
        R = self.rank
        if T == 1 and softcap is None:
            pool, tables = self._decode_blocks(step.tables)
            out = metal_kernels.paged_mla(q[:, :, 0, :R], q[:, :, 0, R:], pool, tables, step.context_lens,
                                          scale)[:, :, None]
        else:
            cached = self._gather(step.tables)[:, None]  # (B, 1, S, R + P)
            masks = self._visible(step, cached.shape[2])
            out = mx.concatenate([attend(q[b:b + 1], cached[b:b + 1], cached[b:b + 1, ..., :R], scale, masks[b],
                                         softcap) for b in range(B)])
        self.pool.layer_done(step, self.layer_id)
        return out


class PagedCaches(list):
    """One paged cache per layer, plus the `pool` they share (sequences, blocks, the active batch)."""

    def __init__(self, caches, pool: BlockPool):
        super().__init__(caches)
        self.pool = pool


def make_paged_cache(spec: ModelSpec, num_blocks: int = 256, block_size: int = 16, prefix_cache: bool = False,
                     kv_bits: Optional[int] = None, kv_group_size: int = 64) -> PagedCaches:
    """A paged cache for every layer, sharing one pool, with one empty sequence active (generate.py's case);
    prefix_cache=True keys full blocks by their token prefix for `pool.claim_prefix` (see block_pool.py);
    kv_bits=4|8 stores the blocks quantized in groups of kv_group_size (paged_quantized.py)."""
    if kv_bits is None:
        def layer_cache(attn):
            return PagedLatentCache(pool, attn.kv_lora_rank) if isinstance(attn, MLASpec) else PagedKVCache(pool, attn)
    else:
        from . import paged_quantized as pq

        pq.check_kv_quantization(spec, kv_bits, kv_group_size)

        def layer_cache(attn):
            if isinstance(attn, MLASpec):
                return pq.QuantizedPagedLatentCache(pool, attn.kv_lora_rank, kv_bits, kv_group_size)
            return pq.QuantizedPagedKVCache(pool, attn, kv_bits, kv_group_size)
    pool = BlockPool(num_blocks, block_size, prefix_cache)
    caches = [layer_cache(layer.attn) for layer in spec.layers]
    pool.active = [pool.add_sequence()]
    return PagedCaches(caches, pool)
