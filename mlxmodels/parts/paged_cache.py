"""Paged KV caches: per layer a block pool, per sequence a block table (kept by a shared `BlockPool`).

`PagedKVCache` holds keys and values as (num_blocks, block_size, n_kv, head_dim); `PagedLatentCache` holds MLA's
rows [latent | rope key] as (num_blocks, block_size, kv_lora_rank + rope_dim). A forward pass runs over the
pool's active sequences (one batch row each, at its own position: `offset` is an int for one sequence and an
int32 array (B,) for several). Decode (one token per sequence) runs the paged attention kernel through
`metal_kernels` (reference MLX ops off a Metal GPU); a multi-token step (prefill, speculative verification)
gathers the sequence's blocks and attends with an explicit mask.

    cache = model.make_cache(paged=True, num_blocks=512, block_size=16)
    cache.pool.active -> [sequence id]; cache.pool.fork(sid), .truncate(sid, n), .free(sid), .free_blocks
"""

from typing import List, Optional

import mlx.core as mx

import metal_kernels

from ..spec import AttnSpec, ModelSpec
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

    def _arrays(self) -> list:
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
        self.n_kv, self.head_dim = attn.n_kv_heads, attn.head_dim
        self.window, self.chunk = attn.window, attn.chunk
        self.keys: Optional[mx.array] = None  # (num_blocks, block_size, n_kv, head_dim)
        self.values: Optional[mx.array] = None

    def _arrays(self) -> list:
        return [self.keys, self.values]

    def _allocate(self, k, v) -> None:
        shape = (self.pool.num_blocks, self.pool.block_size, self.n_kv)
        self.keys = mx.zeros((*shape, k.shape[-1]), k.dtype)
        self.values = mx.zeros((*shape, v.shape[-1]), v.dtype)

    def attend(self, q, k, v, scale: float, softcap=None):
        # q: (B, H, T, D); k, v: (B, n_kv, T, D) for the T new tokens of each active sequence
        B, _, T, _ = q.shape
        step = self.pool.begin(T, self.layer_id)
        if self.keys is None:
            self._allocate(k, v)
        self.keys[step.blocks, step.rows] = k.transpose(0, 2, 1, 3).reshape(B * T, self.n_kv, -1)
        self.values[step.blocks, step.rows] = v.transpose(0, 2, 1, 3).reshape(B * T, self.n_kv, -1)
        if T == 1:
            out = metal_kernels.paged_attention(q[:, :, 0], self.keys, self.values, step.tables, step.context_lens,
                                                scale, softcap, self.window, self.chunk)[:, :, None]
        else:
            keys = metal_kernels.reference.gather_blocks(self.keys, step.tables).transpose(0, 2, 1, 3)  # (B, n_kv, S, D)
            values = metal_kernels.reference.gather_blocks(self.values, step.tables).transpose(0, 2, 1, 3)
            masks = self._visible(step, keys.shape[2], self.window, self.chunk)
            out = mx.concatenate([attend(q[b:b + 1], keys[b:b + 1], values[b:b + 1], scale, masks[b], softcap)
                                  for b in range(B)])
        self.pool.layer_done(step, self.layer_id)
        return out


class PagedLatentCache(_PagedLayer):
    """MLA's paged cache: one row [latent (R) | rope key (P)] per token, attended in latent space (absorbed)."""

    def __init__(self, pool: BlockPool, kv_lora_rank: int, rope_dim: int):
        super().__init__(pool)
        self.rank, self.rope_dim = kv_lora_rank, rope_dim
        self.rows: Optional[mx.array] = None  # (num_blocks, block_size, R + P)

    def _arrays(self) -> list:
        return [self.rows]

    def attend_latent(self, q_latent, q_rope, latent, k_rope, scale: float):
        """q_latent (B, H, T, R) (W_UK absorbed), q_rope (B, H, T, P), this step's latent (B, T, R) and rotated
        k_rope (B, T, P) -> (B, H, T, R), the attention output in latent space (apply W_UV after)."""
        B, H, T, R = q_latent.shape
        step = self.pool.begin(T, self.layer_id)
        if self.rows is None:
            self.rows = mx.zeros((self.pool.num_blocks, self.pool.block_size, R + k_rope.shape[-1]), latent.dtype)
        self.rows[step.blocks, step.rows] = mx.concatenate([latent, k_rope], axis=-1).reshape(B * T, -1)
        if T == 1:
            out = metal_kernels.paged_mla(q_latent[:, :, 0], q_rope[:, :, 0], self.rows, step.tables,
                                          step.context_lens, scale)[:, :, None]
        else:
            rows = metal_kernels.reference.gather_blocks(self.rows, step.tables)  # (B, S, R + P)
            masks = self._visible(step, rows.shape[1])
            outs = []
            for b in range(B):
                c, kr = rows[b, :, :R], rows[b, :, R:]  # (S, R), (S, P)
                scores = (q_latent[b] @ c.T + q_rope[b] @ kr.T) * scale  # (H, T, S)
                scores = mx.where(masks[b], scores, mx.array(-mx.inf, scores.dtype))
                outs.append(mx.softmax(scores.astype(mx.float32), axis=-1).astype(c.dtype) @ c)  # (H, T, R)
            out = mx.stack(outs)
        self.pool.layer_done(step, self.layer_id)
        return out


class PagedCaches(list):
    """One paged cache per layer, plus the `pool` they share (sequences, blocks, the active batch)."""

    def __init__(self, caches, pool: BlockPool):
        super().__init__(caches)
        self.pool = pool


def make_paged_cache(spec: ModelSpec, num_blocks: int = 256, block_size: int = 16) -> PagedCaches:
    """A paged cache for every layer, sharing one pool, with one empty sequence active (generate.py's case)."""
    pool = BlockPool(num_blocks, block_size)
    caches = [PagedKVCache(pool, layer.attn) for layer in spec.layers]
    pool.active = [pool.add_sequence()]
    return PagedCaches(caches, pool)
