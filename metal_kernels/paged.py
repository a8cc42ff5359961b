"""Launches of the paged decode attention kernels (paged_attention.metal, paged_mla.metal) from MLX arrays."""

from typing import Optional

import mlx.core as mx

from .launch import KernelDef, Launch

PAGED_ATTENTION = KernelDef(
    "paged_attention", "paged_attention.metal",
    ("q", "k_pool", "v_pool", "block_tables", "context_lens", "spans", "scales"), ("out",))
PAGED_MLA = KernelDef(
    "paged_mla", "paged_mla.metal", ("q_latent", "q_rope", "pool", "block_tables", "context_lens", "scale"), ("out",))

NSG = 4  # SIMD-groups per threadgroup: 128 threads share the reads of one (sequence, KV head)


def _check_tables(block_tables: mx.array, context_lens: mx.array, B: int) -> None:
    if block_tables.ndim != 2 or block_tables.shape[0] != B or block_tables.dtype != mx.int32:
        raise ValueError(f"block_tables must be int32 (B={B}, max_blocks), got {block_tables.dtype} {block_tables.shape}")
    if context_lens.shape != (B,) or context_lens.dtype != mx.int32:
        raise ValueError(f"context_lens must be int32 (B={B},), got {context_lens.dtype} {context_lens.shape}")


def attention_launch(q, k_pool, v_pool, block_tables, context_lens, scale: float, softcap: Optional[float] = None,
                     window: Optional[int] = None, chunk: Optional[int] = None, nsg: int = NSG) -> Launch:
    """q (B, H, D); k_pool, v_pool (num_blocks, block_size, Hkv, D) -> a launch whose output is (B, H, D)."""
    B, H, D = q.shape
    if k_pool.ndim != 4 or v_pool.shape != k_pool.shape:
        raise ValueError(f"k_pool and v_pool must both be (num_blocks, block_size, Hkv, D), got {k_pool.shape} "
                         f"and {v_pool.shape}")
    _, BS, Hkv, Dk = k_pool.shape
    if Dk != D or D % 32 or H % Hkv:
        raise ValueError(f"head dim {D} must match the pool's {Dk} and be a multiple of 32; "
                         f"{H} query heads must be a multiple of {Hkv} KV heads")
    if not q.dtype == k_pool.dtype == v_pool.dtype:
        raise ValueError(f"q, k_pool and v_pool must share a dtype, got {q.dtype}, {k_pool.dtype}, {v_pool.dtype}")
    _check_tables(block_tables, context_lens, B)
    spans = mx.array([window or 0, chunk or 0], mx.int32)
    scales = mx.array([scale, softcap or 0.0], mx.float32)
    return Launch(PAGED_ATTENTION, [q, k_pool, v_pool, block_tables, context_lens, spans, scales],
                  [("T", q.dtype), ("D", D), ("G", H // Hkv), ("BS", BS), ("NSG", nsg)],
                  grid=(32 * nsg, Hkv, B), threadgroup=(32 * nsg, 1, 1), output_shapes=[q.shape],
                  output_dtypes=[q.dtype])


def heads_per_group(n_heads: int) -> int:
    """Heads sharing one threadgroup's reads: 4 keeps the per-lane registers at ~2 * 4 * R/32 floats."""
    return next(g for g in (4, 2, 1) if n_heads % g == 0)


def mla_launch(q_latent, q_rope, pool, block_tables, context_lens, scale: float, nsg: int = NSG,
               heads: Optional[int] = None) -> Launch:
    """q_latent (B, H, R), q_rope (B, H, P), pool (num_blocks, block_size, R + P) -> output (B, H, R)."""
    B, H, R = q_latent.shape
    P = q_rope.shape[-1]
    if q_rope.shape[:2] != (B, H) or pool.ndim != 3 or pool.shape[2] != R + P:
        raise ValueError(f"expected q_latent (B, H, R), q_rope (B, H, P), pool (blocks, block_size, R + P); got "
                         f"{q_latent.shape}, {q_rope.shape}, {pool.shape}")
    if R % 32 or P % 32:
        raise ValueError(f"kv_lora_rank {R} and rope dim {P} must be multiples of 32")
    if not q_latent.dtype == q_rope.dtype == pool.dtype:
        raise ValueError("q_latent, q_rope and pool must share a dtype")
    _check_tables(block_tables, context_lens, B)
    hg = heads or heads_per_group(H)
    return Launch(PAGED_MLA, [q_latent, q_rope, pool, block_tables, context_lens, mx.array(scale, mx.float32)],
                  [("T", q_latent.dtype), ("R", R), ("P", P), ("HG", hg), ("BS", pool.shape[1]), ("NSG", nsg)],
                  grid=(32 * nsg, H // hg, B), threadgroup=(32 * nsg, 1, 1), output_shapes=[q_latent.shape],
                  output_dtypes=[q_latent.dtype])
