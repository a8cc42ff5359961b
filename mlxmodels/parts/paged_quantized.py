"""Quantized paged caches: the pool's rows stored as `mx.quantize` codes with per-group scales and biases.

Each token row (a head's key or value, or MLA's [latent | rope key]) is quantized along its last axis in groups of
`group_size` at 4 or 8 bits, as it is written. A step dequantizes only its sequences' blocks: a multi-token step
attends over them as the float cache does; a decode step hands them to the same `metal_kernels` entry point as a
small float pool of their own (B * max_blocks blocks, tables counting through it), since the kernels read float
blocks. Codes, scales and biases are pool arrays of their own with the block axes first, so copy on write,
prefix caching and nbytes handle them as they do the float arrays.

    cache = model.make_cache(paged=True, num_blocks=512, kv_bits=8, kv_group_size=64)
"""

from typing import List, Optional

import mlx.core as mx

import metal_kernels

from ..spec import AttnSpec, MLASpec, ModelSpec
from .block_pool import BlockPool, Step
from .paged_cache import PagedKVCache, PagedLatentCache

__all__ = ["KV_BITS", "KV_GROUP_SIZES", "QuantizedBlocks", "QuantizedPagedKVCache", "QuantizedPagedLatentCache",
           "check_kv_quantization"]

KV_BITS = (4, 8)
KV_GROUP_SIZES = (32, 64, 128)  # what mx.quantize takes


def check_kv_quantization(spec: ModelSpec, bits, group_size) -> None:
    """ValueError naming the option when `bits`/`group_size` cannot quantize every layer's cached rows."""
    if bits not in KV_BITS:
        raise ValueError(f"kv_bits must be one of {KV_BITS} (or None for float KV), got {bits!r}")
    if group_size not in KV_GROUP_SIZES:
        raise ValueError(f"kv_group_size must be one of {KV_GROUP_SIZES}, got {group_size!r}")
    widths = sorted({row_width(layer.attn) for layer in spec.layers})
    if any(w % group_size for w in widths):
        fits = [g for g in KV_GROUP_SIZES if all(w % g == 0 for w in widths)]
        todo = f"use kv_group_size={fits[-1]}" if fits else "leave kv_bits out (float KV)"
        raise ValueError(f"kv_group_size={group_size} does not divide this model's cached row widths {widths}; {todo}")


def row_width(attn) -> int:
    """The last axis of one cached row: a head's key/value, or MLA's [latent | rope key]."""
    if isinstance(attn, MLASpec):
        return attn.kv_lora_rank + attn.qk_rope_head_dim
    return attn.head_dim


class QuantizedBlocks:
    """One quantized pool array: codes (uint32), scales and biases, each (num_blocks, block_size, ..., width)."""

    def __init__(self, pool: BlockPool, bits: int, group_size: int):
        self.pool, self.bits, self.group_size = pool, bits, group_size
        self.parts: Optional[List[mx.array]] = None  # [codes, scales, biases] from the first write

    def store(self, step: Step, x) -> None:
        # x: (B * T, ..., F) rows in step order
        parts = mx.quantize(x, group_size=self.group_size, bits=self.bits)
        if self.parts is None:
            self.parts = [mx.zeros((self.pool.num_blocks, self.pool.block_size, *p.shape[1:]), p.dtype) for p in parts]
        for pool_part, p in zip(self.parts, parts):
            pool_part[step.blocks, step.rows] = p

    def gather(self, tables):
        """The dequantized rows of the sequences in `tables` (B, max_blocks) -> (B, S, ..., F), token order."""
        codes, scales, biases = (metal_kernels.reference.gather_blocks(p, tables) for p in self.parts)
        return mx.dequantize(codes, scales, biases, group_size=self.group_size, bits=self.bits)

    def gather_blocks(self, tables):
        """The blocks of `tables` (B, W) dequantized -> (B * W, block_size, ..., F): a float pool of their own."""
        codes, scales, biases = (p[tables.reshape(-1)] for p in self.parts)
        return mx.dequantize(codes, scales, biases, group_size=self.group_size, bits=self.bits)

    def arrays(self) -> list:
        return self.parts or [None]


def local_tables(tables):
    """Tables into the pool `gather_blocks` makes: row b holds blocks b * W .. b * W + W - 1."""
    B, W = tables.shape
    return mx.arange(B * W, dtype=mx.int32).reshape(B, W)


class QuantizedPagedKVCache(PagedKVCache):
    def __init__(self, pool: BlockPool, attn: AttnSpec, bits: int, group_size: int):
        super().__init__(pool, attn)
        self.bits, self.group_size = bits, group_size
        self.qkeys = QuantizedBlocks(pool, bits, group_size)
        self.qvalues = QuantizedBlocks(pool, bits, group_size)

    def _arrays(self) -> list:
        return self.qkeys.arrays() + self.qvalues.arrays()

    def _store(self, step: Step, k, v) -> None:
        self.qkeys.store(step, k)
        self.qvalues.store(step, v)

    def _gather(self, tables):
        return self.qkeys.gather(tables), self.qvalues.gather(tables)

    def _decode_blocks(self, tables):
        return self.qkeys.gather_blocks(tables), self.qvalues.gather_blocks(tables), local_tables(tables)


class QuantizedPagedLatentCache(PagedLatentCache):
    """MLA's rows [latent | rope key] quantized whole, as stored: one set of groups over R + P."""

    def __init__(self, pool: BlockPool, kv_lora_rank: int, bits: int, group_size: int):
        super().__init__(pool, kv_lora_rank)
        self.bits, self.group_size = bits, group_size
        self.qrows = QuantizedBlocks(pool, bits, group_size)

    def _arrays(self) -> list:
        return self.qrows.arrays()

    def _store(self, step: Step, rows) -> None:
        self.qrows.store(step, rows)

    def _gather(self, tables):
        return self.qrows.gather(tables)

    def _decode_blocks(self, tables):
        return self.qrows.gather_blocks(tables), local_tables(tables)
