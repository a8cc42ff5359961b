"""Paged decode attention (dense and MLA latent) in the emulator / on the GPU against reference.py, and
reference.py against an independent NumPy oracle: ragged lengths, partial last blocks, an empty batch slot,
shuffled block tables, GQA ratios 1/4/8, head dims 64/128, window/chunk/softcap, three dtypes; one pass and the
2-pass split over the sequence (forced on short contexts, and where MLX's threshold picks it); MLA with 16 and 128
heads and DeepSeek-V3's 512 + 64 rows; and the plans' variants, which a self-test sample must reproduce."""

import math

import mlx.core as mx
import numpy as np
import pytest

from metal_kernels import emulator, paged, reference
from metal_kernels.launch import run_metal
from metal_kernels.paged import attention_launch, attention_plan, mla_launch, mla_plan
from tests.kernels.conftest import check, f64

TOL = {mx.float32: 2e-5, mx.float16: 4e-3, mx.bfloat16: 3e-2}


def tables_for(lens, block_size, rng, spare=3):
    """Block tables over a shuffled pool (unused entries point at real blocks: the kernel must not read them)."""
    width = max(1, max(math.ceil(n / block_size) for n in lens))
    n_blocks = len(lens) * width + spare
    ids = rng.permutation(n_blocks)[: len(lens) * width].reshape(len(lens), width)
    return n_blocks, mx.array(ids.astype(np.int32)), mx.array(np.array(lens, np.int32))


def np_visible(pos, j, window, chunk):
    return j <= pos and (not window or pos - j < window) and (not chunk or pos // chunk == j // chunk)


def np_paged_attention(q, k_pool, v_pool, tables, lens, scale, softcap=None, window=None, chunk=None):
    """Token by token, in float64, from the definition."""
    q, k_pool, v_pool = (f64(a) for a in (q, k_pool, v_pool))
    tables, lens = np.array(tables), np.array(lens)
    B, H, D = q.shape
    BS, Hkv = k_pool.shape[1], k_pool.shape[2]
    out = np.zeros((B, H, D))
    for b in range(B):
        pos = lens[b] - 1
        rows = [(tables[b, j // BS], j % BS) for j in range(lens[b]) if np_visible(pos, j, window, chunk)]
        if not rows:
            continue
        keys = np.stack([k_pool[blk, r] for blk, r in rows])  # (S, Hkv, D)
        values = np.stack([v_pool[blk, r] for blk, r in rows])
        for h in range(H):
            kv = h // (H // Hkv)
            s = keys[:, kv] @ q[b, h] * scale
            if softcap:
                s = np.tanh(s / softcap) * softcap
            p = np.exp(s - s.max())
            out[b, h] = (p / p.sum()) @ values[:, kv]
    return out


def dense_case(G, D, Hkv, dtype, block_size, lens, seed=0):
    rng = np.random.default_rng(seed)
    n_blocks, tables, lens = tables_for(lens, block_size, rng)

    def rand(*shape):
        return mx.array(rng.standard_normal(shape).astype(np.float32)).astype(dtype)

    return rand(len(lens.tolist()), Hkv * G, D), rand(n_blocks, block_size, Hkv, D), rand(n_blocks, block_size, Hkv, D), \
        tables, lens


# (G query heads per KV head, head dim, KV heads, dtype, block size, context lengths)
DENSE = {
    "mha-d64": (1, 64, 3, mx.float32, 16, [1, 16, 35, 0, 83]),
    "gqa4-d64": (4, 64, 2, mx.float32, 8, [9, 1, 40, 8]),
    "mqa8-d128": (8, 128, 1, mx.float32, 16, [50, 17, 0]),
    "gqa4-d128-f16": (4, 128, 2, mx.float16, 16, [33, 5]),
    "gqa2-d64-bf16": (2, 64, 2, mx.bfloat16, 16, [21, 47]),
    "gqa4-batch9": (4, 64, 1, mx.float32, 4, [1, 2, 3, 4, 5, 6, 7, 13, 0]),  # context_lens in device memory
}
SPANS = {
    "causal": {},
    "window": dict(window=7),
    "chunk": dict(chunk=12),  # chunks that do not line up with blocks
    "softcap": dict(softcap=4.0),
    "window+softcap": dict(window=20, softcap=3.0),
}


@pytest.mark.parametrize("span", sorted(SPANS))
@pytest.mark.parametrize("case", sorted(DENSE))
def test_paged_attention_kernel(backend, case, span):
    G, D, Hkv, dtype, bs, lens = DENSE[case]
    q, k_pool, v_pool, tables, lens = dense_case(G, D, Hkv, dtype, bs, lens)
    kw = SPANS[span]
    launch = attention_launch(q, k_pool, v_pool, tables, lens, D**-0.5, **kw)
    want = reference.paged_attention(q, k_pool, v_pool, tables, lens, D**-0.5, **kw)
    got = check(backend, launch, f64(want), atol=TOL[dtype])
    assert not np.any(got[np.array(lens) == 0]), "an empty batch slot must give zeros"


@pytest.mark.parametrize("span", sorted(SPANS))
def test_reference_matches_numpy(span):
    q, k_pool, v_pool, tables, lens = dense_case(4, 64, 2, mx.float32, 8, [9, 1, 40, 0, 23], seed=1)
    kw = SPANS[span]
    got = reference.paged_attention(q, k_pool, v_pool, tables, lens, 0.125, **kw)
    np.testing.assert_allclose(f64(got), np_paged_attention(q, k_pool, v_pool, tables, lens, 0.125, **kw), atol=1e-5)


def np_paged_mla(q_latent, q_rope, pool, tables, lens, scale):
    ql, qr, pool = f64(q_latent), f64(q_rope), f64(pool)
    tables, lens = np.array(tables), np.array(lens)
    B, H, R = ql.shape
    BS = pool.shape[1]
    out = np.zeros((B, H, R))
    for b in range(B):
        if lens[b] == 0:
            continue
        rows = np.stack([pool[tables[b, j // BS], j % BS] for j in range(lens[b])])  # (S, R + P)
        s = (ql[b] @ rows[:, :R].T + qr[b] @ rows[:, R:].T) * scale  # (H, S)
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        out[b] = (p / p.sum(axis=-1, keepdims=True)) @ rows[:, :R]
    return out


def mla_case(H, R, P, dtype, block_size, lens, seed=0):
    rng = np.random.default_rng(seed)
    n_blocks, tables, lens = tables_for(lens, block_size, rng)

    def rand(*shape):
        return mx.array(rng.standard_normal(shape).astype(np.float32)).astype(dtype)

    B = len(lens.tolist())
    return rand(B, H, R), rand(B, H, P), rand(n_blocks, block_size, R + P), tables, lens


# (heads, kv_lora_rank, rope dim, dtype, block size, context lengths); DeepSeek's 512 + 64 once, with few tokens
MLA = {
    "h8-r64-p32": (8, 64, 32, mx.float32, 16, [1, 16, 37, 0]),
    "h6-r128-p32-f16": (6, 128, 32, mx.float16, 8, [19, 3]),
    "h4-r512-p64": (4, 512, 64, mx.float32, 16, [11, 20]),
    "h2-r64-p64-bf16": (2, 64, 64, mx.bfloat16, 16, [30]),
    "h16-r64-p32": (16, 64, 32, mx.float32, 16, [33, 0, 8]),  # 16 SIMD-groups of one head read each row once
    "h128-r64-p32": (128, 64, 32, mx.float32, 8, [12, 27]),  # 32 SIMD-groups of 4 heads: each row read once
    "h128-r512-p64": (128, 512, 64, mx.float32, 16, [13]),  # DeepSeek-V3: 32 SIMD-groups of 1 head, 4 groups
}


@pytest.mark.parametrize("case", sorted(MLA))
def test_paged_mla_kernel(backend, case):
    H, R, P, dtype, bs, lens = MLA[case]
    ql, qr, pool, tables, lens = mla_case(H, R, P, dtype, bs, lens)
    scale = (R + P) ** -0.5
    want = reference.paged_mla(ql, qr, pool, tables, lens, scale)
    check(backend, mla_launch(ql, qr, pool, tables, lens, scale), f64(want), atol=TOL[dtype])


def test_mla_reference_matches_numpy():
    ql, qr, pool, tables, lens = mla_case(4, 64, 32, mx.float32, 8, [9, 1, 40, 0], seed=2)
    got = reference.paged_mla(ql, qr, pool, tables, lens, 0.1)
    np.testing.assert_allclose(f64(got), np_paged_mla(ql, qr, pool, tables, lens, 0.1), atol=1e-5)


def test_launch_rejects_shapes_the_kernel_cannot_take():
    q, k_pool, v_pool, tables, lens = dense_case(2, 64, 2, mx.float32, 16, [5])
    with pytest.raises(ValueError, match="multiple of 32"):
        attention_launch(q[..., :48], k_pool[..., :48], v_pool[..., :48], tables, lens, 0.1)
    with pytest.raises(ValueError, match="block_tables"):
        attention_launch(q, k_pool, v_pool, tables.astype(mx.int64), lens, 0.1)


# ---- the 2-pass split: pass 1 per partition, pass 2 merging them, each launch checked on its own

def checked_runner(backend: str):
    """A plan runner: in the emulator every thread order must give bit-identical outputs for each launch."""
    def run(launch):
        if backend == "metal":
            out = run_metal(launch)
            mx.eval(out)
            return out
        runs = emulator.run(launch)
        for order, r in zip(emulator.ORDERS[1:], runs[1:]):
            for a, b in zip(r, runs[0]):
                np.testing.assert_array_equal(f64(a), f64(b), err_msg=f"{launch.kernel.name}: {order} differs")
        return runs[0]
    return run


def run_plan(backend, plan, want, atol):
    got = f64(plan.run(checked_runner(backend)))
    np.testing.assert_allclose(got, want, atol=atol)
    return got


# (case in DENSE or a new one, partitions): a partition count that does not divide the visible keys, and more
# partitions than a short sequence has keys (empty partitions)
SPLIT_DENSE = {
    "gqa4-d64": (DENSE["gqa4-d64"], 3),
    "mqa8-d128-f16": ((8, 128, 1, mx.float16, 16, [50, 17, 0]), 5),
    "mha-d64-bf16": ((1, 64, 2, mx.bfloat16, 8, [1, 29, 0, 64]), 4),
}


@pytest.mark.parametrize("span", sorted(SPANS))
@pytest.mark.parametrize("case", sorted(SPLIT_DENSE))
def test_paged_attention_two_pass(backend, case, span):
    (G, D, Hkv, dtype, bs, lens), parts = SPLIT_DENSE[case]
    q, k_pool, v_pool, tables, lens = dense_case(G, D, Hkv, dtype, bs, lens, seed=5)
    kw = SPANS[span]
    plan = attention_plan(q, k_pool, v_pool, tables, lens, D**-0.5, **kw, parts=parts)
    assert "paged_attention_reduce" in plan.variant
    want = reference.paged_attention(q, k_pool, v_pool, tables, lens, D**-0.5, **kw)
    got = run_plan(backend, plan, f64(want), TOL[dtype])
    assert not np.any(got[np.array(lens) == 0]), "an empty batch slot must give zeros"


def test_paged_attention_splits_at_mlx_threshold(backend, monkeypatch):
    """GQA from 4096 keys on a base GPU, as MLX: the smallest table that splits, with MLX's 32 partitions."""
    monkeypatch.setattr(paged, "device_size", lambda: "g")
    q, k_pool, v_pool, tables, lens = dense_case(2, 64, 1, mx.float32, 256, [4096, 4000, 1], seed=6)
    short = attention_plan(q, k_pool, v_pool, tables[:, :15], mx.minimum(lens, 15 * 256), 0.125)
    assert "reduce" not in short.variant, "3840 keys take one pass"
    plan = paged.paged_attention_plan(q, k_pool, v_pool, tables, lens, 0.125, softcap=5.0)
    assert plan.shape_class.endswith("passes2")
    want = reference.paged_attention(q, k_pool, v_pool, tables, lens, 0.125, softcap=5.0)
    run_plan(backend, plan, f64(want), TOL[mx.float32])


SPLIT_MLA = {  # (heads, kv_lora_rank, rope dim, dtype, block size, context lengths), partitions
    "h16-r64-p32": ((16, 64, 32, mx.float32, 16, [70, 5, 0]), 3),
    "h128-r64-p32-bf16": ((128, 64, 32, mx.bfloat16, 8, [21, 40]), 2),
    "h128-r512-p64": ((128, 512, 64, mx.float32, 16, [19]), 2),  # DeepSeek-V3: 4 head groups of 32
}


@pytest.mark.parametrize("case", sorted(SPLIT_MLA))
def test_paged_mla_two_pass(backend, case):
    (H, R, P, dtype, bs, lens), parts = SPLIT_MLA[case]
    ql, qr, pool, tables, lens = mla_case(H, R, P, dtype, bs, lens, seed=7)
    scale = (R + P) ** -0.5
    plan = mla_plan(ql, qr, pool, tables, lens, scale, parts=parts)
    assert "paged_attention_reduce" in plan.variant
    want = reference.paged_mla(ql, qr, pool, tables, lens, scale)
    got = run_plan(backend, plan, f64(want), TOL[dtype])
    assert not np.any(got[np.array(lens) == 0]), "an empty batch slot must give zeros"


def test_paged_mla_splits_at_threshold(backend, monkeypatch):
    monkeypatch.setattr(paged, "device_size", lambda: "g")
    ql, qr, pool, tables, lens = mla_case(16, 64, 32, mx.float32, 64, [1024, 700], seed=8)
    plan = paged.paged_mla_plan(ql, qr, pool, tables, lens, 0.1)
    assert plan.shape_class.endswith("passes2")
    run_plan(backend, plan, f64(reference.paged_mla(ql, qr, pool, tables, lens, 0.1)), TOL[mx.float32])


# ---- plans: the sample's variant is the real call's, over batches 1-9, tiny and long tables, 1 and 2 passes

def _shapes_args(B, width, G, Hkv=1, D=64, BS=16, dtype=mx.float16):
    """Arguments with the shapes of a call (plans read shapes only: the arrays are never evaluated)."""
    return (mx.zeros((B, Hkv * G, D), dtype), mx.zeros((4, BS, Hkv, D), dtype), mx.zeros((4, BS, Hkv, D), dtype),
            mx.zeros((B, width), mx.int32), mx.zeros((B,), mx.int32), 0.125)


@pytest.mark.parametrize("size", ["g", "s", "d"])
def test_attention_sample_has_the_variant_of_the_call(monkeypatch, size):
    monkeypatch.setattr(paged, "device_size", lambda: size)
    seen = set()
    for B in range(1, 10):
        for width, G, kw in ((1, 4, {}), (3, 1, dict(softcap=2.0)), (63, 2, {}), (64, 1, {}), (256, 4, {}),
                             (256, 1, dict(window=100)), (1000, 8, dict(chunk=8192))):
            args = _shapes_args(B, width, G)
            plan = paged.paged_attention_plan(*args, **kw)
            sample = paged.paged_attention_sample(*args, **kw)
            assert paged.paged_attention_plan(*sample).variant == plan.variant, (B, width, G, kw)
            seen.add("reduce" in plan.variant)
    assert seen == {False, True}, "the shapes must cover one pass and two"


def test_mla_sample_has_the_variant_of_the_call(monkeypatch):
    monkeypatch.setattr(paged, "device_size", lambda: "g")
    seen = set()
    for B in range(1, 10):
        for width, H in ((1, 16), (5, 128), (63, 16), (64, 16), (300, 128)):
            args = (mx.zeros((B, H, 64), mx.bfloat16), mx.zeros((B, H, 32), mx.bfloat16), mx.zeros((4, 16, 96), mx.bfloat16),
                    mx.zeros((B, width), mx.int32), mx.zeros((B,), mx.int32), 0.1)
            plan = paged.paged_mla_plan(*args)
            assert paged.paged_mla_plan(*paged.paged_mla_sample(*args)).variant == plan.variant, (B, width, H)
            seen.add("reduce" in plan.variant)
    assert seen == {False, True}


def test_timing_stays_on_the_side_of_the_threshold(monkeypatch):
    """The timed table is the class's widest (a power of two) unless that would change the number of passes."""
    monkeypatch.setattr(paged, "device_size", lambda: "g")
    for width, want in ((200, 200), (256, 256), (300, 512), (3, 4)):
        args = _shapes_args(1, width, 2, BS=16, dtype=mx.float32)
        timing = paged.paged_attention_timing(*args)
        assert timing[3].shape == (1, want)
        assert paged.paged_attention_plan(*timing).variant == paged.paged_attention_plan(*args).variant


def test_mlx_pass_rules():
    """MLX's routing (scaled_dot_product_attention.cpp): base GPUs split only with GQA, from 4096 keys."""
    assert paged.attention_parts(4095, 4, "g") == 1 and paged.attention_parts(4096, 4, "g") == 64
    assert paged.attention_parts(4096, 2, "g") == 32 and paged.attention_parts(1 << 20, 1, "g") == 1
    assert paged.attention_parts(1024, 1, "d") == 128 and paged.attention_parts(16384, 8, "d") == 512
    assert paged.attention_parts(1023, 8, "s") == 1 and paged.attention_parts(8192, 8, "s") == 128


def test_mla_layout_register_budget():
    assert paged.mla_layout(128, 512, 64) == (32, 1)  # DeepSeek-V3: 36 floats per lane per head
    assert paged.mla_layout(16, 512, 64) == (16, 1)
    assert paged.mla_layout(128, 64, 32) == (32, 4)  # 7 floats per head: 4 heads per SIMD-group
    assert paged.mla_layout(6, 128, 32) == (6, 1)


# ---- planted bugs: each must be caught by the checks above (thread orders bit-identical, close to the reference)

def _split_dense():
    q, k_pool, v_pool, tables, lens = dense_case(4, 64, 2, mx.float32, 8, [9, 1, 40, 23], seed=3)
    first = attention_launch(q, k_pool, v_pool, tables, lens, 0.125, window=30, parts=3)
    return first, f64(reference.paged_attention(q, k_pool, v_pool, tables, lens, 0.125, window=30))


def _one_pass_dense():
    q, k_pool, v_pool, tables, lens = dense_case(4, 64, 2, mx.float32, 8, [9, 1, 40, 23], seed=3)
    return attention_launch(q, k_pool, v_pool, tables, lens, 0.125, window=30), \
        f64(reference.paged_attention(q, k_pool, v_pool, tables, lens, 0.125, window=30))


def _mla(parts):
    def make():  # 64 heads: 32 SIMD-groups of 2 heads; 20 rows: three tiles
        ql, qr, pool, tables, lens = mla_case(64, 64, 32, mx.float32, 8, [20, 3], seed=4)
        return mla_launch(ql, qr, pool, tables, lens, 0.1, parts), f64(reference.paged_mla(ql, qr, pool, tables, lens, 0.1))
    return make


BARRIER = "threadgroup_barrier(mem_flags::mem_threadgroup);\n"
# name -> (case, original text, broken text); the text is looked up in pass 1's body, else in pass 2's
PLANTED = {
    "attention: merge reads before the other SIMD-groups wrote": (_one_pass_dense, f"}}\n{BARRIER}const float top", "}\nconst float top"),
    "attention: next slice overwrites what others still read": (_one_pass_dense, f"  }}\n  {BARRIER}}}\n", "  }\n}\n"),
    "attention: every query head reads KV head 0": (_one_pass_dense, "* n_kv + kv_head) * D", "* n_kv + 0) * D"),
    "attention: window one token too wide": (_one_pass_dense, "pos - window + 1", "pos - window"),
    "attention split: a partition stops one key early": (_split_dense, "min(pos + 1, first + per_part)", "min(pos, first + per_part)"),
    "reduce: partitions added without the common maximum": (_split_dense, "const float f = metal::exp(mine[p * W + D] - top);", "const float f = 1.0f;"),
    "reduce: next slice overwrites what others still read": (_split_dense, f"    }}\n  }}\n  {BARRIER}}}\n", "    }\n  }\n}\n"),
    "mla: tile overwritten while others still read it": (_mla(1), f"    m[h] = top;\n  }}\n  {BARRIER}", "    m[h] = top;\n  }\n"),
    "mla: rope key read from the latent": (_mla(1), "tile[r][R + i * 32 + lane]", "tile[r][i * 32 + lane]"),
    "mla: the heads of a SIMD-group overlap": (_mla(1), "+ sg) * HPS;", "+ sg);"),
    "mla split: partition chunks overlap": (_mla(3), "const int first = part * per_part;", "const int first = part * (per_part - 1);"),
}


def _planted_run(first, original, broken, want):
    """True when the checks catch the launches with `original` replaced by `broken` in the body that holds it."""
    from dataclasses import replace

    def mutate(launch):
        return replace(launch, source=launch.body.replace(original, broken)) if original in launch.body else launch

    runner = checked_runner("emulator")
    split = len(first.output_shapes[0]) == 4
    try:
        got = runner(mutate(first))[0]
        if split:
            got = runner(mutate(paged.reduce_launch(got, mx.float32)))[0]
        np.testing.assert_allclose(f64(got), want, atol=1e-4 * max(1.0, np.abs(want).max()))
    except (AssertionError, emulator.EmulatorError):
        return True
    return False


@pytest.mark.skipif(not emulator.available(), reason="the Metal emulator needs Linux and g++")
@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_bug_is_caught(name):
    make, original, broken = PLANTED[name]
    first, want = make()
    bodies = [first.body] + ([paged.REDUCE.source] if len(first.output_shapes[0]) == 4 else [])
    assert sum(b.count(original) for b in bodies) == 1, "the bug no longer applies: update it with the kernel"
    assert not _planted_run(first, original, original, want), "the real kernel must pass the check"
    assert _planted_run(first, original, broken, want), f"not caught: {name}"
