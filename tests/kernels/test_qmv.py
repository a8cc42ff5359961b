"""Quantized matrix-vector kernels against mx.quantized_matmul (MLX's affine layout): 4 and 8 bits, groups of
32/64/128, ragged N and K, several rows of x, three dtypes; the fused SwiGLU variant against its two-matmul form.
The unpacking itself is checked against a NumPy decoding of the packed words."""

import mlx.core as mx
import numpy as np
import pytest

from metal_kernels import reference
from metal_kernels.quantized import qmv_launch, qmv_swiglu_launch
from tests.kernels.conftest import check, f64

REL = {mx.float32: 1e-5, mx.float16: 2e-3, mx.bfloat16: 1e-2}


def quantized(rng, N, K, group_size, bits, dtype):
    w = mx.array(rng.standard_normal((N, K)).astype(np.float32)).astype(dtype)
    return mx.quantize(w, group_size=group_size, bits=bits)


def activations(rng, M, K, dtype):
    return mx.array(rng.standard_normal((M, K)).astype(np.float32)).astype(dtype)


# (M rows of x, N, K): N not a multiple of the 8 rows a threadgroup makes; K below, above and between 256 steps
SHAPES = [(1, 37, 384), (3, 64, 128), (2, 9, 640)]


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
