"""Paged decode attention (dense and MLA latent) in the emulator / on the GPU against reference.py, and
reference.py against an independent NumPy oracle: ragged lengths, partial last blocks, an empty batch slot,
shuffled block tables, GQA ratios 1/4/8, head dims 64/128, window/chunk/softcap, three dtypes."""

import math

import mlx.core as mx
import numpy as np
import pytest

from metal_kernels import reference
from metal_kernels.paged import attention_launch, mla_launch
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
