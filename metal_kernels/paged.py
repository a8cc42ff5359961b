"""Launches of the paged decode attention kernels (paged_attention.metal, paged_mla.metal, and the second pass
paged_attention_reduce.metal) from MLX arrays, and their plans for the dispatch (plan.py).

Both kernels follow MLX's sdpa_vector: one pass while the context is short, and for long contexts a split over the
sequence into partitions (pass 1 writes a partial softmax per partition, pass 2 merges them). The choice reads the
context the block table covers (shapes, never values): plans are made while mx.compile traces.
"""

from typing import List, Optional, Tuple

import mlx.core as mx

from . import draw
from .launch import MAX_CONSTANT_ARRAY_SIZE, KernelDef, Launch
from .plan import Plan, Unsupported, pow2_at_least, variant
from .quantized import gpu_architecture

PAGED_ATTENTION = KernelDef(
    "paged_attention", "paged_attention.metal",
    ("q", "k_pool", "v_pool", "block_tables", "context_lens", "spans", "scales"), ("out",))
PAGED_MLA = KernelDef(
    "paged_mla", "paged_mla.metal", ("q_latent", "q_rope", "pool", "block_tables", "context_lens", "scale"), ("out",))
REDUCE = KernelDef("paged_attention_reduce", "paged_attention_reduce.metal", ("partials",), ("out",))

FLOATS = (mx.float32, mx.float16, mx.bfloat16)
SIMD = 32  # lanes per SIMD-group; also MLX's one-pass SIMD-groups per query head (1024 threads)
MAX_G = 32  # pass 1 has one SIMD-group per query head of a KV head: at most 1024 threads
LANE_BUDGET = 40  # MLA: floats per lane for the heads a SIMD-group owns (MLX's gqa pass 1 keeps about as many)
MLA_TILE_ROWS = 8  # TR in paged_mla.metal
MLA_MAX_ROW = 960  # R + P: the tile TR * (R + P) floats stays under Metal's 32 KB of threadgroup memory
MLA_SPLIT_FROM = 1024  # tokens from which MLA takes two passes (see mla_parts)


def _check_tables(block_tables: mx.array, context_lens: mx.array, B: int) -> None:
    if block_tables.ndim != 2 or block_tables.shape[0] != B or block_tables.dtype != mx.int32:
        raise Unsupported(f"block_tables must be int32 (B={B}, max_blocks), got {block_tables.dtype} "
                          f"{block_tables.shape}")
    if context_lens.shape != (B,) or context_lens.dtype != mx.int32:
        raise Unsupported(f"context_lens must be int32 (B={B},), got {context_lens.dtype} {context_lens.shape}")


# ---- how many passes, and how many partitions: MLX's sdpa_vector choice (scaled_dot_product_attention.cpp,
# ml-explore/mlx@846d176). The size letter ends MLX's architecture name ("applegpu_g15s"): d and s are the large
# GPUs (Max, Ultra); without a GPU the base rules apply.

def device_size() -> str:
    arch = gpu_architecture()
    return arch[-1] if arch else "g"


def mlx_two_pass(context: int, G: int, size: str) -> bool:
    """MLX routes a decode step to the 2-pass kernels on a large GPU from 1024 keys, with GQA from 4096."""
    return (size in "ds" and context >= 1024) or (G > 1 and context >= 4096)


def mlx_partitions(context: int, G: int, size: str) -> int:
    """MLX's `blocks` for sdpa_vector_2pass (n_simds = G for one query token)."""
    if size == "s":
        if context > 1024 and G > 4:
            return 128 if context <= 8192 else 256 if context <= 32768 else 512 if context <= 65536 else 1024
        return 64
    if size == "d":
        if G <= 2 and context > 8192:
            return 256
        if G >= 6 and context >= 16384:
            return 512 if context < 65536 else 1024
        return 128
    return 64 if G >= 4 else 32


def visible_context(block_tables: mx.array, block_size: int, window: Optional[int], chunk: Optional[int]) -> int:
    """The most keys one query can see: the tokens the table covers, at most a window or a chunk."""
    return min(block_tables.shape[1] * block_size, window or 1 << 62, chunk or 1 << 62)


def attention_parts(context: int, G: int, size: str) -> int:
    """1 for one pass, else the partitions of the 2-pass split (MLX's choice)."""
    return mlx_partitions(context, G, size) if mlx_two_pass(context, G, size) else 1


def mla_parts(context: int, n_heads: int, groups: int, size: str) -> int:
    """MLA splits from MLA_SPLIT_FROM tokens on every GPU (its one-pass grid has B * groups threadgroups, where
    MLX's one pass has B * H), into MLX's partition count for a GQA factor of H shared among the head groups, so a
    sequence gets about as many threadgroups as MLX gives one KV head; at least 4 tiles per partition, so the
    float32 partials (H * parts * R) stay small beside the rows read."""
    if context < MLA_SPLIT_FROM:
        return 1
    return max(2, min(mlx_partitions(context, n_heads, size) // groups, context // (4 * MLA_TILE_ROWS)))


# ---- launches

def attention_launch(q, k_pool, v_pool, block_tables, context_lens, scale: float, softcap: Optional[float] = None,
                     window: Optional[int] = None, chunk: Optional[int] = None, parts: int = 1) -> Launch:
    """q (B, H, D); k_pool, v_pool (num_blocks, block_size, Hkv, D) -> a launch whose output is (B, H, D) with
    parts = 1 (one pass), else pass 1's partials (B, H, parts, D + 2) float32 for reduce_launch."""
    B, H, D = q.shape
    if k_pool.ndim != 4 or v_pool.shape != k_pool.shape:
        raise Unsupported(f"k_pool and v_pool must both be (num_blocks, block_size, Hkv, D), got {k_pool.shape} "
                         f"and {v_pool.shape}")
    _, BS, Hkv, Dk = k_pool.shape
    if Dk != D or D % 32 or H % Hkv or H // Hkv > MAX_G:
        raise Unsupported(f"head dim {D} must match the pool's {Dk} and be a multiple of 32; "
                         f"{H} query heads must be 1 to {MAX_G} times {Hkv} KV heads")
    if q.dtype not in FLOATS or not q.dtype == k_pool.dtype == v_pool.dtype:
        raise Unsupported(f"q, k_pool and v_pool must share a float dtype, got {q.dtype}, {k_pool.dtype}, "
                          f"{v_pool.dtype}")
    _check_tables(block_tables, context_lens, B)
    spans = mx.array([window or 0, chunk or 0], mx.int32)
    scales = mx.array([scale, softcap or 0.0], mx.float32)
    inputs = [q, k_pool, v_pool, block_tables, context_lens, spans, scales]
    if parts == 1:
        return Launch(PAGED_ATTENTION, inputs, [("T", q.dtype), ("O", q.dtype), ("D", D), ("SPLIT", False)],
                      grid=(32 * SIMD, H, B), threadgroup=(32 * SIMD, 1, 1), output_shapes=[q.shape],
                      output_dtypes=[q.dtype])
    G = H // Hkv
    return Launch(PAGED_ATTENTION, inputs, [("T", q.dtype), ("O", mx.float32), ("D", D), ("SPLIT", True)],
                  grid=(32 * G, Hkv, B * parts), threadgroup=(32 * G, 1, 1), output_shapes=[(B, H, parts, D + 2)],
                  output_dtypes=[mx.float32])


def reduce_launch(partials: mx.array, dtype: mx.Dtype) -> Launch:
    """Pass 2: partials (B, H, parts, D + 2) float32 -> (B, H, D) in dtype."""
    B, H, parts, W = partials.shape
    ns = min(SIMD, parts)  # SIMD-groups: MLX's 32, fewer where there are fewer partitions to share out
    return Launch(REDUCE, [partials], [("T", dtype), ("D", W - 2)], grid=(32 * ns, H, B),
                  threadgroup=(32 * ns, 1, 1), output_shapes=[(B, H, W - 2)], output_dtypes=[dtype])


def mla_layout(n_heads: int, R: int, P: int) -> Tuple[int, int]:
    """-> (SIMD-groups per threadgroup, heads per SIMD-group): as many SIMD-groups as divide the heads (up to 32),
    then as many heads per SIMD-group as LANE_BUDGET allows (per head: (2R + P) / 32 + 2 floats per lane)."""
    nsg = max(d for d in range(1, SIMD + 1) if n_heads % d == 0)
    per_head = (2 * R + P) // 32 + 2
    hps = next(g for g in (4, 2, 1) if (n_heads // nsg) % g == 0 and (g * per_head <= LANE_BUDGET or g == 1))
    return nsg, hps


def mla_launch(q_latent, q_rope, pool, block_tables, context_lens, scale: float, parts: int = 1) -> Launch:
    """q_latent (B, H, R), q_rope (B, H, P), pool (num_blocks, block_size, R + P) -> a launch whose output is
    (B, H, R) with parts = 1, else pass 1's partials (B, H, parts, R + 2) float32 for reduce_launch."""
    B, H, R = q_latent.shape
    P = q_rope.shape[-1]
    if q_rope.shape[:2] != (B, H) or pool.ndim != 3 or pool.shape[2] != R + P:
        raise Unsupported(f"expected q_latent (B, H, R), q_rope (B, H, P), pool (blocks, block_size, R + P); got "
                         f"{q_latent.shape}, {q_rope.shape}, {pool.shape}")
    if R % 32 or P % 32 or R + P > MLA_MAX_ROW:
        raise Unsupported(f"kv_lora_rank {R} and rope dim {P} must be multiples of 32, together at most {MLA_MAX_ROW}")
    if q_latent.dtype not in FLOATS or not q_latent.dtype == q_rope.dtype == pool.dtype:
        raise Unsupported("q_latent, q_rope and pool must share a float dtype")
    _check_tables(block_tables, context_lens, B)
    nsg, hps = mla_layout(H, R, P)
    out_dtype = q_latent.dtype if parts == 1 else mx.float32
    return Launch(PAGED_MLA, [q_latent, q_rope, pool, block_tables, context_lens, mx.array(scale, mx.float32)],
                  [("T", q_latent.dtype), ("O", out_dtype), ("R", R), ("P", P), ("HPS", hps), ("SPLIT", parts > 1)],
                  grid=(32 * nsg, H // (nsg * hps), B * parts), threadgroup=(32 * nsg, 1, 1),
                  output_shapes=[q_latent.shape if parts == 1 else (B, H, parts, R + 2)], output_dtypes=[out_dtype])


# ---- plans

def passes_plan(first: Launch, parts: int, dtype: mx.Dtype, shape_class: str) -> Plan:
    """A plan of one launch (parts = 1), or of pass 1 then the reduction of its partials into dtype."""
    if parts == 1:
        return Plan(variant(first), shape_class, lambda runner: runner(first)[0])
    placeholder = mx.zeros(first.output_shapes[0], mx.float32)  # names pass 2's kernel; never evaluated
    return Plan(variant(first, reduce_launch(placeholder, dtype)), shape_class,
                lambda runner: runner(reduce_launch(runner(first)[0], dtype))[0])


def attention_plan(q, k_pool, v_pool, block_tables, context_lens, scale, softcap=None, window=None, chunk=None,
                   parts: Optional[int] = None) -> Plan:
    """paged_attention_plan with the partition count given (tests force a split on a short context); None: MLX's."""
    BS, Hkv = k_pool.shape[1], k_pool.shape[2]
    if parts is None:
        parts = attention_parts(visible_context(block_tables, BS, window, chunk), q.shape[1] // max(Hkv, 1),
                                device_size())
    launch = attention_launch(q, k_pool, v_pool, block_tables, context_lens, scale, softcap, window, chunk, parts)
    return passes_plan(launch, parts, q.dtype, _context_class(block_tables, BS, parts))


def paged_attention_plan(q, k_pool, v_pool, block_tables, context_lens, scale: float, softcap: Optional[float] = None,
                         window: Optional[int] = None, chunk: Optional[int] = None) -> Plan:
    return attention_plan(q, k_pool, v_pool, block_tables, context_lens, scale, softcap, window, chunk)


def mla_plan(q_latent, q_rope, pool, block_tables, context_lens, scale, parts: Optional[int] = None) -> Plan:
    """paged_mla_plan with the partition count given; None: mla_parts."""
    BS = pool.shape[1]
    if parts is None:
        H, R = q_latent.shape[1:]
        nsg, hps = mla_layout(H, R, q_rope.shape[-1])
        parts = mla_parts(visible_context(block_tables, BS, None, None), H, H // (nsg * hps), device_size())
    launch = mla_launch(q_latent, q_rope, pool, block_tables, context_lens, scale, parts)
    return passes_plan(launch, parts, q_latent.dtype, _context_class(block_tables, BS, parts))


def paged_mla_plan(q_latent, q_rope, pool, block_tables, context_lens, scale: float) -> Plan:
    return mla_plan(q_latent, q_rope, pool, block_tables, context_lens, scale)


def _context_class(block_tables, BS: int, parts: int) -> str:
    B, max_blocks = block_tables.shape
    return f"B{B} blocks{pow2_at_least(max_blocks)} BS{BS} passes{1 if parts == 1 else 2}"


# ---- self-test and timing inputs

def _widths(B: int, max_blocks: int, BS: int, split_from: Optional[int]) -> Tuple[int, int]:
    """A smaller (batch, table width) that compiles what (B, max_blocks) compiles: on the same side of the
    constant-buffer threshold for context_lens (B,) and block_tables (B, max_blocks), and, for a split plan, a table
    that covers split_from tokens (the fewest that still split)."""
    B2 = min(B, MAX_CONSTANT_ARRAY_SIZE)
    if split_from is not None:  # one sequence where the batch is small; a longer table only splits more
        B2 = 1 if B2 < MAX_CONSTANT_ARRAY_SIZE else B2
        mb2 = -(-split_from // BS)
    else:
        mb2 = min(max_blocks, 4)
    if (B * max_blocks < MAX_CONSTANT_ARRAY_SIZE) != (B2 * mb2 < MAX_CONSTANT_ARRAY_SIZE):
        mb2 = -(-MAX_CONSTANT_ARRAY_SIZE // B2)
    return B2, mb2


def _tables(B: int, max_blocks: int, BS: int, full: bool):
    """-> (block_tables (B, max_blocks) over a shuffled pool of B * max_blocks blocks, context_lens (B,)):
    full contexts for timing; for a self-test ragged ones, with an empty slot (0) when there are several."""
    tables = draw.permutation(B * max_blocks).reshape(B, max_blocks).astype(mx.int32)
    top = max_blocks * BS
    lens = mx.full((B,), top, mx.int32) if full else draw.randint(1, top + 1, (B,)).astype(mx.int32)
    if not full and B > 1:
        lens = lens * (mx.arange(B) != B - 1)
    return tables, lens.astype(mx.int32)


def _attention_args(q, k_pool, B: int, max_blocks: int, full: bool):
    _, H, D = q.shape
    _, BS, Hkv, _ = k_pool.shape
    k = draw.normal((B * max_blocks, BS, Hkv, D)).astype(k_pool.dtype)
    v = draw.normal((B * max_blocks, BS, Hkv, D)).astype(k_pool.dtype)
    out = (draw.normal((B, H, D)).astype(q.dtype), k, v, *_tables(B, max_blocks, BS, full))
    mx.eval(out)
    return out


def _split_from(context_of, parts_of, width: int) -> Optional[int]:
    """The fewest tokens a table can cover and still split, where `width` blocks split; None where it does not.
    context_of(width) -> visible keys; parts_of(context) -> partitions."""
    if parts_of(context_of(width)) == 1:
        return None
    lo, hi = 1, width  # the smallest width that splits, by bisection (parts_of is monotone in the context)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if parts_of(context_of(mid)) > 1 else (mid + 1, hi)
    return context_of(lo)


def _timing_width(context_of, parts_of, width: int) -> int:
    """The class's widest table (a power of two) where that does not change one pass into two or back."""
    wide = pow2_at_least(width)
    return wide if (parts_of(context_of(wide)) > 1) == (parts_of(context_of(width)) > 1) else width


def _attention_rules(q, k_pool, window, chunk):
    BS, G, size = k_pool.shape[1], q.shape[1] // k_pool.shape[2], device_size()
    return (lambda w: min(w * BS, window or 1 << 62, chunk or 1 << 62)), (lambda n: attention_parts(n, G, size))


def paged_attention_sample(q, k_pool, v_pool, block_tables, context_lens, scale, softcap=None, window=None,
                           chunk=None):
    context_of, parts_of = _attention_rules(q, k_pool, window, chunk)
    B, max_blocks = block_tables.shape
    B2, mb2 = _widths(B, max_blocks, k_pool.shape[1], _split_from(context_of, parts_of, max_blocks))
    return (*_attention_args(q, k_pool, B2, mb2, False), scale, softcap, window, chunk)


def paged_attention_timing(q, k_pool, v_pool, block_tables, context_lens, scale, softcap=None, window=None,
                           chunk=None):
    B, max_blocks = block_tables.shape
    width = _timing_width(*_attention_rules(q, k_pool, window, chunk), max_blocks)
    return (*_attention_args(q, k_pool, B, width, True), scale, softcap, window, chunk)


def _mla_args(q_latent, q_rope, pool, B: int, max_blocks: int, full: bool):
    _, H, R = q_latent.shape
    BS, width = pool.shape[1:]
    out = (draw.normal((B, H, R)).astype(q_latent.dtype), draw.normal((B, H, q_rope.shape[-1])).astype(q_rope.dtype),
           draw.normal((B * max_blocks, BS, width)).astype(pool.dtype), *_tables(B, max_blocks, BS, full))
    mx.eval(out)
    return out


def _mla_rules(q_latent, q_rope, pool):
    (H, R), BS, size = q_latent.shape[1:], pool.shape[1], device_size()
    nsg, hps = mla_layout(H, R, q_rope.shape[-1])
    return (lambda w: w * BS), (lambda n: mla_parts(n, H, H // (nsg * hps), size))


def paged_mla_sample(q_latent, q_rope, pool, block_tables, context_lens, scale):
    context_of, parts_of = _mla_rules(q_latent, q_rope, pool)
    B, max_blocks = block_tables.shape
    B2, mb2 = _widths(B, max_blocks, pool.shape[1], _split_from(context_of, parts_of, max_blocks))
    return (*_mla_args(q_latent, q_rope, pool, B2, mb2, False), scale)


def paged_mla_timing(q_latent, q_rope, pool, block_tables, context_lens, scale):
    B, max_blocks = block_tables.shape
    width = _timing_width(*_mla_rules(q_latent, q_rope, pool), max_blocks)
    return (*_mla_args(q_latent, q_rope, pool, B, width, True), scale)
