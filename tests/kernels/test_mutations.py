"""The kernel tests can fail: deliberately broken copies of each kernel (a wrong index, a missing barrier, an
off-by-one bound, a pointer in the wrong address space) must be caught by the same check the real kernels pass
(all thread orders bit-identical and close to the reference), by an emulator error or a build refusal."""

from dataclasses import replace

import mlx.core as mx
import numpy as np
import pytest

from metal_kernels import emulator, reference
from metal_kernels.paged import attention_launch, mla_launch
from metal_kernels.quantized import qmv_launch
from tests.kernels.conftest import check, f64
from tests.kernels.test_paged_attention import dense_case, mla_case

pytestmark = pytest.mark.skipif(not emulator.available(), reason="the Metal emulator needs Linux and g++")


def dense():
    q, k_pool, v_pool, tables, lens = dense_case(4, 64, 2, mx.float32, 8, [9, 1, 40, 23], seed=3)
    launch = attention_launch(q, k_pool, v_pool, tables, lens, 0.125, window=30)
    return launch, f64(reference.paged_attention(q, k_pool, v_pool, tables, lens, 0.125, window=30))


def mla():
    ql, qr, pool, tables, lens = mla_case(8, 64, 32, mx.float32, 8, [9, 1, 40], seed=4)
    return mla_launch(ql, qr, pool, tables, lens, 0.1), f64(reference.paged_mla(ql, qr, pool, tables, lens, 0.1))


def qmv(M=2, N=37, K=1152):  # K: two full steps of 32 lanes and a partial one
    rng = np.random.default_rng(5)
    x = mx.array(rng.standard_normal((M, K)).astype(np.float32))
    w, s, b = mx.quantize(mx.array(rng.standard_normal((N, K)).astype(np.float32)), group_size=32, bits=4)
    return qmv_launch(x, w, s, b, 32, 4), f64(reference.qmv(x, w, s, b, 32, 4))


def qmv_tiny():  # w is 4 words, so MLX passes it (and scales, biases) in the constant address space
    return qmv(1, 1, 32)


# name -> (case, original text, broken text)
MUTATIONS = {
    "attention: merge reads before the other SIMD-groups wrote": (
        dense, "  tg[lane][sg] = acc[i];\n  threadgroup_barrier(mem_flags::mem_threadgroup);\n",
        "  tg[lane][sg] = acc[i];\n"),
    "attention: next feature overwrites what others still read": (
        dense, "O(den > 0.0f ? o / den : 0.0f);\n  }\n  threadgroup_barrier(mem_flags::mem_threadgroup);\n}",
        "O(den > 0.0f ? o / den : 0.0f);\n  }\n}"),
    "attention: a barrier that does not order threadgroup memory": (
        dense, "  tg_l[sg] = l;\n}\nthreadgroup_barrier(mem_flags::mem_threadgroup);",
        "  tg_l[sg] = l;\n}\nthreadgroup_barrier(mem_flags::mem_device);"),
    "attention: every query head reads KV head 0": (dense, "* n_kv + kv_head) * D", "* n_kv + 0) * D"),
    "attention: the last key is skipped": (dense, "pos + 1;\nconst int step", "pos;\nconst int step"),
    "attention: window one token too wide": (dense, "pos - window + 1", "pos - window"),
    "mla: tile read before it is all written": (
        mla, "      tile[r][i] = float(row[i]);\n    }\n  }\n  threadgroup_barrier(mem_flags::mem_threadgroup);\n",
        "      tile[r][i] = float(row[i]);\n    }\n  }\n"),
    "mla: next tile overwrites what others still read": (
        mla, "    m[h] = top;\n  }\n  threadgroup_barrier(mem_flags::mem_threadgroup);\n}",
        "    m[h] = top;\n  }\n}"),
    "mla: a tile row past the end of the tile": (
        mla, "for (int r = sg; r < rows; r += nsg)", "for (int r = sg; r <= rows; r += nsg)"),
    "qmv: wrong group for the scale": (qmv, "const int g = k / GS;", "const int g = k / (2 * GS);"),
    "qmv: lanes overlap in K": (qmv, "k += 32 * VPT", "k += 31 * VPT"),
    "qmv: a device-pointer helper given a constant input": (
        qmv_tiny, "qdot<BITS>(w + n * words", "qdot<BITS, const device uint32_t*>(w + n * words"),
}


def caught(launch, want) -> bool:
    try:
        check("emulator", launch, want, atol=1e-4 * max(1.0, np.abs(want).max()))
    except (AssertionError, emulator.EmulatorError, emulator.BuildError):
        return True
    return False


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_broken_kernel_is_caught(name):
    make, original, broken = MUTATIONS[name]
    launch, want = make()
    assert launch.body.count(original) == 1, "the mutation no longer applies: update it with the kernel"
    assert not caught(launch, want), "the real kernel must pass the check the mutant fails"
    assert caught(replace(launch, source=launch.body.replace(original, broken)), want), f"not caught: {name}"
