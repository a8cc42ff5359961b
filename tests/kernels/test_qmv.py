"""Quantized matrix-vector kernels against mx.quantized_matmul (MLX's affine layout): 4 and 8 bits, groups of
32/64/128, ragged N and K (a partial last step), rows of x up to the limit, tiny inputs MLX passes in the constant
address space, three dtypes; the fused SwiGLU variant against its two-matmul form. The unpacking itself is checked
against a NumPy decoding of the packed words; the row limit against MLX's table; the plans' self-test inputs
against the real call's compiled variant."""

import mlx.core as mx
import numpy as np
import pytest

from metal_kernels import emulator, reference
from metal_kernels.plan import Unsupported
from metal_kernels.quantized import (MAX_ROWS, max_rows, qmv_launch, qmv_plan, qmv_sample, qmv_swiglu_launch,
                                     qmv_swiglu_plan, qmv_swiglu_sample, qmv_swiglu_timing, qmv_timing)
from tests.kernels.conftest import check, f64, outputs

REL = {mx.float32: 1e-5, mx.float16: 2e-3, mx.bfloat16: 1e-2}


def quantized(rng, N, K, group_size, bits, dtype):
    w = mx.array(rng.standard_normal((N, K)).astype(np.float32)).astype(dtype)
    return mx.quantize(w, group_size=group_size, bits=bits)


def activations(rng, M, K, dtype):
    return mx.array(rng.standard_normal((M, K)).astype(np.float32)).astype(dtype)


# (M rows of x, N, K): N not a multiple of the 8 rows a threadgroup makes; K below one step of the 32 lanes (512
# values at 4 bits, 256 at 8), and steps plus a partial last one
SHAPES = [(1, 37, 384), (3, 64, 128), (2, 9, 640), (4, 13, 1152)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("bits", [4, 8])
def test_qmv_equals_quantized_matmul(backend, bits, group_size, shape):
    M, N, K = shape
    rng = np.random.default_rng(bits * group_size + N)
    x = activations(rng, M, K, mx.float32)
    w, s, b = quantized(rng, N, K, group_size, bits, mx.float32)
    want = f64(reference.qmv(x, w, s, b, group_size, bits))
    check(backend, qmv_launch(x, w, s, b, group_size, bits), want, atol=REL[mx.float32] * np.abs(want).max())


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("bits", [4, 8])
def test_qmv_half_types(backend, bits, dtype):
    rng = np.random.default_rng(bits)
    x = activations(rng, 2, 256, dtype)
    w, s, b = quantized(rng, 24, 256, 64, bits, dtype)
    # The kernel accumulates in float32, as MLX's GPU kernels do; MLX's CPU path accumulates in the 16-bit type,
    # so the oracle is quantized_matmul on the same values in float32, and the CPU result is only near it.
    want = f64(reference.qmv(x.astype(mx.float32), w, s.astype(mx.float32), b.astype(mx.float32), 64, bits))
    check(backend, qmv_launch(x, w, s, b, 64, bits), want, atol=REL[dtype] * np.abs(want).max())
    cpu_rel = {mx.float16: 2e-2, mx.bfloat16: 6e-2}[dtype]
    np.testing.assert_allclose(f64(reference.qmv(x, w, s, b, 64, bits)), want, atol=cpu_rel * np.abs(want).max())


@pytest.mark.parametrize("group_size", [32, 128])
@pytest.mark.parametrize("bits", [4, 8])
def test_qmv_swiglu_equals_two_matmuls(backend, bits, group_size):
    rng = np.random.default_rng(7 * bits + group_size)
    x = activations(rng, 2, 384, mx.float32)
    gate = quantized(rng, 45, 384, group_size, bits, mx.float32)
    up = quantized(rng, 45, 384, group_size, bits, mx.float32)
    want = f64(reference.qmv_swiglu(x, gate, up, group_size, bits))
    check(backend, qmv_swiglu_launch(x, gate, up, group_size, bits), want, atol=REL[mx.float32] * np.abs(want).max())


def np_dequantize(w, scales, biases, group_size, bits):
    """Element j of a row sits at bits [j * bits, (j + 1) * bits) of the row's little-endian byte stream."""
    raw = np.array(w).view(np.uint8)  # (N, K * bits / 8), little-endian words -> byte stream
    stream = np.unpackbits(raw, axis=1, bitorder="little")  # (N, K * bits), LSB first
    q = stream.reshape(raw.shape[0], -1, bits) @ (1 << np.arange(bits))  # (N, K)
    s = np.repeat(np.array(scales), group_size, axis=1)
    b = np.repeat(np.array(biases), group_size, axis=1)
    return s * q + b


@pytest.mark.parametrize("bits", [4, 8])
def test_reference_layout_is_mlx_affine(bits):
    rng = np.random.default_rng(0)
    w, s, b = quantized(rng, 5, 128, 32, bits, mx.float32)
    np.testing.assert_allclose(np_dequantize(w, s, b, 32, bits), np.array(mx.dequantize(w, s, b, 32, bits)), atol=1e-6)
    x = activations(rng, 1, 128, mx.float32)
    np.testing.assert_allclose(f64(reference.qmv(x, w, s, b, 32, bits)),
                               f64(x) @ np_dequantize(w, s, b, 32, bits).T, rtol=1e-5, atol=1e-5)


def test_launch_rejects_what_the_kernel_cannot_take():
    rng = np.random.default_rng(0)
    x = activations(rng, 1, 128, mx.float32)
    w, s, b = quantized(rng, 8, 128, 64, 4, mx.float32)
    with pytest.raises(ValueError, match="4 or 8 bits"):
        qmv_launch(x, w, s, b, 64, 3)
    w96, s96, b96 = quantized(rng, 8, 96, 32, 4, mx.float32)
    with pytest.raises(ValueError, match="multiple of the group size"):
        qmv_launch(x[:, :96], w96, s96, b96, 64, 4)


@pytest.mark.parametrize("bits", [4, 8])
def test_qmv_partial_last_step(backend, bits):
    """K = 544: one full step of the 32 lanes at 4 bits (two at 8) and a last step where 2 (4) lanes work."""
    rng = np.random.default_rng(11 + bits)
    x = activations(rng, 3, 544, mx.float32)
    gate = quantized(rng, 21, 544, 32, bits, mx.float32)
    up = quantized(rng, 21, 544, 32, bits, mx.float32)
    want = f64(reference.qmv(x, *gate, 32, bits))
    check(backend, qmv_launch(x, *gate, 32, bits), want, atol=REL[mx.float32] * np.abs(want).max())
    want = f64(reference.qmv_swiglu(x, gate, up, 32, bits))
    check(backend, qmv_swiglu_launch(x, gate, up, 32, bits), want, atol=REL[mx.float32] * np.abs(want).max())


# (N, K, group size, bits, dtype): w, scales and biases below 8 elements go to `constant`, as MLX passes them
TINY = [(1, 32, 32, 4, mx.float32), (1, 32, 32, 8, mx.float16), (3, 64, 32, 4, mx.bfloat16)]


@pytest.mark.parametrize("tiny", TINY, ids=lambda t: f"{t[0]}x{t[1]}-g{t[2]}-b{t[3]}-{t[4]}")
def test_qmv_constant_address_space_inputs(backend, tiny):
    N, K, group_size, bits, dtype = tiny
    rng = np.random.default_rng(N * K + bits)
    x = activations(rng, 2, K, dtype)
    gate = quantized(rng, N, K, group_size, bits, dtype)
    up = quantized(rng, N, K, group_size, bits, dtype)
    launch = qmv_launch(x, *gate, group_size, bits)
    n_constant = sum(a.size < 8 for a in launch.inputs)
    assert n_constant >= 2 and qmv_plan(x, *gate, group_size, bits).variant.count("c_") == n_constant
    f32 = [a.astype(mx.float32) if a.dtype != mx.uint32 else a for a in (x, *gate, *up)]
    want = f64(reference.qmv(*f32[:4], group_size, bits))
    check(backend, launch, want, atol=REL[dtype] * np.abs(want).max())
    want = f64(reference.qmv_swiglu(f32[0], f32[1:4], f32[4:], group_size, bits))
    check(backend, qmv_swiglu_launch(x, gate, up, group_size, bits), want, atol=REL[dtype] * np.abs(want).max())


def test_qmv_rows_up_to_the_limit(backend):
    """The kernels at the most rows any GPU gives them, and the plans at this GPU's limit (x (..., K) in, y
    (..., N) out) and refusing one row more."""
    rng = np.random.default_rng(3)
    x = activations(rng, MAX_ROWS, 256, mx.float32)
    gate = quantized(rng, 24, 256, 64, 4, mx.float32)
    up = quantized(rng, 24, 256, 64, 4, mx.float32)
    assert max_rows(256, 24, "applegpu_g17s") == MAX_ROWS
    want = f64(reference.qmv_swiglu(x, gate, up, 64, 4))
    check(backend, qmv_swiglu_launch(x, gate, up, 64, 4), want, atol=REL[mx.float32] * np.abs(want).max())

    def runner(launch):  # every thread order gives the same outputs; the first order's go on
        runs = outputs(backend, launch)
        for run in runs[1:]:
            np.testing.assert_array_equal(f64(run[0]), f64(runs[0][0]))
        return runs[0]

    limit = max_rows(256, 24)
    x3 = x[:limit].reshape(1, limit, 256)
    y = qmv_plan(x3, *gate, 64, 4).run(runner)
    want = f64(reference.qmv(x3, *gate, 64, 4))
    assert y.shape == (1, limit, 24)
    np.testing.assert_allclose(f64(y), want, atol=REL[mx.float32] * np.abs(want).max())
    with pytest.raises(Unsupported, match="rows of x"):
        qmv_plan(x[:limit + 1], *gate, 64, 4)
    with pytest.raises(Unsupported, match="rows of x"):
        qmv_swiglu_plan(x[:limit + 1], gate, up, 64, 4)


def test_row_limit_is_mlx_qmv_batch_limit():
    """quantized_matmul leaves qmv for qmm at M >= get_qmv_batch_limit(K, N) (mlx/backend/metal/quantized.cpp):
    a few of its table's entries, its size classes' edges, and the conservative default without a known GPU."""
    assert max_rows(4096, 4096, "applegpu_g15s") == 14  # M3 Max: 15
    assert max_rows(2048, 2048, "applegpu_g16g") == 12  # M4: 13 for small matrices, less than for mid-sized ones
    assert max_rows(8192, 8192, "applegpu_g13g") == 5  # M1: 6
    assert max_rows(4096, 4096, "applegpu_g13d") == max_rows(4096, 4096, "applegpu_g15d") == 17  # Ultras: 18
    assert max_rows(2048, 2048, "applegpu_g17s") == 32  # M5 Max: 33
    assert max_rows(2048, 2049, "applegpu_g14s") == 9 and max_rows(4097, 64, "applegpu_g14s") == 5
    assert max_rows(2048, 2048, "applegpu_g12p") == 17  # generations before 13: 18
    for K, N in [(2048, 2048), (4096, 4096), (14336, 4096)]:
        known = [max_rows(K, N, f"applegpu_g{gen}{size}") for gen in range(12, 19) for size in "pgsd"]
        assert max_rows(K, N, "") == max_rows(K, N, "x86_64") == min(known) and max(known) <= MAX_ROWS
        if not mx.metal.is_available():
            assert max_rows(K, N) == min(known)


def _args(M, N, K, group_size, bits, dtype, lead=()):
    """Inputs of the given shapes, never evaluated: plans read shapes and dtypes only."""
    x = mx.zeros((*lead, M, K), dtype)
    w = mx.zeros((N, K * bits // 32), mx.uint32)
    s = mx.zeros((N, K // group_size), dtype)
    return x, (w, s, s), group_size, bits


# (M, N, K, group size, bits): tiny weights in `constant`, a 1 x 1024 weight whose 8 scales are `device` only at
# its full width, rows at the conservative limit, model-sized matrices
PLAN_SHAPES = [(1, 1, 32, 32, 4), (2, 1, 32, 32, 8), (1, 3, 64, 32, 4), (1, 1, 1024, 128, 4), (3, 1, 896, 128, 4),
               (1, 2, 640, 128, 8), (5, 9, 640, 64, 4), (12, 2048, 2048, 64, 4), (9, 4096, 4096, 64, 8),
               (5, 14336, 4096, 64, 4), (5, 4096, 14336, 32, 4)]


@pytest.mark.parametrize("shape", PLAN_SHAPES, ids=lambda s: "-".join(map(str, s)))
def test_sample_and_timing_compile_what_the_call_compiles(shape):
    M, N, K, group_size, bits = shape
    x, (w, s, b), _, _ = _args(M, N, K, group_size, bits, mx.float16, lead=(1,))
    real = qmv_plan(x, w, s, b, group_size, bits)
    sample = qmv_sample(x, w, s, b, group_size, bits)
    assert sample[0].shape[-1] <= 1024 and sample[1].shape[0] <= 40  # small: a cheap self-test
    assert qmv_plan(*sample).variant == real.variant
    assert qmv_plan(*qmv_timing(x, w, s, b, group_size, bits)).shape_class == real.shape_class
    real = qmv_swiglu_plan(x, (w, s, b), (w, s, b), group_size, bits)
    assert qmv_swiglu_plan(*qmv_swiglu_sample(x, (w, s, b), (w, s, b), group_size, bits)).variant == real.variant
    assert qmv_swiglu_plan(*qmv_swiglu_timing(x, (w, s, b), (w, s, b), group_size, bits)).shape_class == \
        real.shape_class
    with pytest.raises(Unsupported, match="rows of x"):
        qmv_plan(*_args(max_rows(K, N) + 1, N, K, group_size, bits, mx.float16)[:1], w, s, b, group_size, bits)
