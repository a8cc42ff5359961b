"""Launches of the paged decode attention kernels (paged_attention.metal, paged_mla.metal) from MLX arrays, and their
plans for the dispatch (plan.py)."""

from typing import Optional

import mlx.core as mx

from .launch import MAX_CONSTANT_ARRAY_SIZE, KernelDef, Launch
from .plan import Plan, Unsupported, pow2_at_least, variant

PAGED_ATTENTION = KernelDef(
    "paged_attention", "paged_attention.metal",
    ("q", "k_pool", "v_pool", "block_tables", "context_lens", "spans", "scales"), ("out",))
PAGED_MLA = KernelDef(
    "paged_mla", "paged_mla.metal", ("q_latent", "q_rope", "pool", "block_tables", "context_lens", "scale"), ("out",))

FLOATS = (mx.float32, mx.float16, mx.bfloat16)
NSG = 4  # SIMD-groups per threadgroup: 128 threads share the reads of one (sequence, KV head)


def _check_tables(block_tables: mx.array, context_lens: mx.array, B: int) -> None:
    if block_tables.ndim != 2 or block_tables.shape[0] != B or block_tables.dtype != mx.int32:
        raise Unsupported(f"block_tables must be int32 (B={B}, max_blocks), got {block_tables.dtype} {block_tables.shape}")
    if context_lens.shape != (B,) or context_lens.dtype != mx.int32:
        raise Unsupported(f"context_lens must be int32 (B={B},), got {context_lens.dtype} {context_lens.shape}")


def attention_launch(q, k_pool, v_pool, block_tables, context_lens, scale: float, softcap: Optional[float] = None,
                     window: Optional[int] = None, chunk: Optional[int] = None, nsg: int = NSG) -> Launch:
    """q (B, H, D); k_pool, v_pool (num_blocks, block_size, Hkv, D) -> a launch whose output is (B, H, D)."""
    B, H, D = q.shape
    if k_pool.ndim != 4 or v_pool.shape != k_pool.shape:
        raise Unsupported(f"k_pool and v_pool must both be (num_blocks, block_size, Hkv, D), got {k_pool.shape} "
                         f"and {v_pool.shape}")
    _, BS, Hkv, Dk = k_pool.shape
    if Dk != D or D % 32 or H % Hkv:
        raise Unsupported(f"head dim {D} must match the pool's {Dk} and be a multiple of 32; "
                         f"{H} query heads must be a multiple of {Hkv} KV heads")
    if q.dtype not in FLOATS or not q.dtype == k_pool.dtype == v_pool.dtype:
        raise Unsupported(f"q, k_pool and v_pool must share a float dtype, got {q.dtype}, {k_pool.dtype}, {v_pool.dtype}")
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
        raise Unsupported(f"expected q_latent (B, H, R), q_rope (B, H, P), pool (blocks, block_size, R + P); got "
                         f"{q_latent.shape}, {q_rope.shape}, {pool.shape}")
    if R % 32 or P % 32:
        raise Unsupported(f"kv_lora_rank {R} and rope dim {P} must be multiples of 32")
    if q_latent.dtype not in FLOATS or not q_latent.dtype == q_rope.dtype == pool.dtype:
        raise Unsupported("q_latent, q_rope and pool must share a float dtype")
    _check_tables(block_tables, context_lens, B)
    hg = heads or heads_per_group(H)
    return Launch(PAGED_MLA, [q_latent, q_rope, pool, block_tables, context_lens, mx.array(scale, mx.float32)],
                  [("T", q_latent.dtype), ("R", R), ("P", P), ("HG", hg), ("BS", pool.shape[1]), ("NSG", nsg)],
                  grid=(32 * nsg, H // hg, B), threadgroup=(32 * nsg, 1, 1), output_shapes=[q_latent.shape],
                  output_dtypes=[q_latent.dtype])


def _context_class(block_tables) -> str:
    B, max_blocks = block_tables.shape
    return f"B{B} blocks{pow2_at_least(max_blocks)}"


def paged_attention_plan(q, k_pool, v_pool, block_tables, context_lens, scale: float, softcap: Optional[float] = None,
                         window: Optional[int] = None, chunk: Optional[int] = None) -> Plan:
    launch = attention_launch(q, k_pool, v_pool, block_tables, context_lens, scale, softcap, window, chunk)
    return Plan(variant(launch), _context_class(block_tables) + f" BS{k_pool.shape[1]}", lambda runner: runner(launch)[0])


def paged_mla_plan(q_latent, q_rope, pool, block_tables, context_lens, scale: float) -> Plan:
    launch = mla_launch(q_latent, q_rope, pool, block_tables, context_lens, scale)
    return Plan(variant(launch), _context_class(block_tables) + f" BS{pool.shape[1]}", lambda runner: runner(launch)[0])


def _small_batch(B: int, max_blocks: int):
    """A smaller (batch, table width) on the same side of the constant-buffer threshold for context_lens (B,) and
    block_tables (B, max_blocks), so the self-test compiles what the real call compiles."""
    B2 = min(B, MAX_CONSTANT_ARRAY_SIZE)
    mb2 = min(max_blocks, 4)
    if (B * max_blocks < MAX_CONSTANT_ARRAY_SIZE) != (B2 * mb2 < MAX_CONSTANT_ARRAY_SIZE):
        mb2 = -(-MAX_CONSTANT_ARRAY_SIZE // B2)
    return B2, mb2


def _tables(B: int, max_blocks: int, BS: int, full: bool):
    """-> (block_tables (B, max_blocks) over a shuffled pool of B * max_blocks blocks, context_lens (B,)):
    full contexts for timing; for a self-test ragged ones, with an empty slot (0) when there are several."""
    tables = mx.random.permutation(B * max_blocks).reshape(B, max_blocks).astype(mx.int32)
    top = max_blocks * BS
    lens = mx.full((B,), top, mx.int32) if full else mx.random.randint(1, top + 1, (B,)).astype(mx.int32)
    if not full and B > 1:
        lens = lens * (mx.arange(B) != B - 1)
    return tables, lens.astype(mx.int32)


def _attention_args(q, k_pool, B: int, max_blocks: int, full: bool):
    _, H, D = q.shape
    _, BS, Hkv, _ = k_pool.shape
    k = mx.random.normal((B * max_blocks, BS, Hkv, D)).astype(k_pool.dtype)
    v = mx.random.normal((B * max_blocks, BS, Hkv, D)).astype(k_pool.dtype)
    out = (mx.random.normal((B, H, D)).astype(q.dtype), k, v, *_tables(B, max_blocks, BS, full))
    mx.eval(out)
    return out


def paged_attention_sample(q, k_pool, v_pool, block_tables, context_lens, scale, softcap=None, window=None,
                           chunk=None):
    B2, mb2 = _small_batch(*block_tables.shape)
    return (*_attention_args(q, k_pool, B2, mb2, False), scale, softcap, window, chunk)


def paged_attention_timing(q, k_pool, v_pool, block_tables, context_lens, scale, softcap=None, window=None,
                           chunk=None):
    B, max_blocks = block_tables.shape
    return (*_attention_args(q, k_pool, B, pow2_at_least(max_blocks), True), scale, softcap, window, chunk)


def _mla_args(q_latent, q_rope, pool, B: int, max_blocks: int, full: bool):
    _, H, R = q_latent.shape
    BS, width = pool.shape[1:]
    out = (mx.random.normal((B, H, R)).astype(q_latent.dtype), mx.random.normal((B, H, q_rope.shape[-1])).astype(q_rope.dtype),
           mx.random.normal((B * max_blocks, BS, width)).astype(pool.dtype), *_tables(B, max_blocks, BS, full))
    mx.eval(out)
    return out


def paged_mla_sample(q_latent, q_rope, pool, block_tables, context_lens, scale):
    return (*_mla_args(q_latent, q_rope, pool, *_small_batch(*block_tables.shape), False), scale)


def paged_mla_timing(q_latent, q_rope, pool, block_tables, context_lens, scale):
    B, max_blocks = block_tables.shape
    return (*_mla_args(q_latent, q_rope, pool, B, pow2_at_least(max_blocks), True), scale)
