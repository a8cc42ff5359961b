"""Launches of the quantized matrix-vector kernels (qmv.metal, qmv_swiglu.metal) on MLX's affine layout."""

import mlx.core as mx

from .launch import KernelDef, Launch

QMV = KernelDef("qmv", "qmv.metal", ("x", "w", "scales", "biases"), ("y",), header_file="qmv_common.metal")
QMV_SWIGLU = KernelDef(
    "qmv_swiglu", "qmv_swiglu.metal",
    ("x", "w_gate", "scales_gate", "biases_gate", "w_up", "scales_up", "biases_up"), ("y",),
    header_file="qmv_common.metal")

ROWS, NSG = 4, 2  # 8 output rows per threadgroup of 64 threads


def check(x, w, scales, biases, group_size: int, bits: int) -> None:
    if bits not in (4, 8) or group_size not in (32, 64, 128):
        raise ValueError(f"the qmv kernels take 4 or 8 bits and groups of 32, 64 or 128; got {bits} bits, "
                         f"group {group_size}")
    M, K = x.shape
    N = w.shape[0]
    if w.dtype != mx.uint32 or w.shape != (N, K * bits // 32):
        raise ValueError(f"w must be uint32 (N, K * bits / 32) = ({N}, {K * bits // 32}), got {w.dtype} {w.shape}")
    if K % group_size or scales.shape != (N, K // group_size) or biases.shape != scales.shape:
        raise ValueError(f"K={K} must be a multiple of the group size {group_size}; scales and biases must be "
                         f"({N}, {K // group_size}), got {scales.shape} and {biases.shape}")
    if not x.dtype == scales.dtype == biases.dtype:
        raise ValueError(f"x, scales and biases must share a dtype, got {x.dtype}, {scales.dtype}, {biases.dtype}")


def _launch(kernel, inputs, x, n_rows, group_size, bits) -> Launch:
    M = x.shape[0]
    return Launch(kernel, inputs, [("T", x.dtype), ("BITS", bits), ("GS", group_size), ("ROWS", ROWS), ("NSG", NSG)],
                  grid=(32 * NSG, -(-n_rows // (ROWS * NSG)), M), threadgroup=(32 * NSG, 1, 1),
                  output_shapes=[(M, n_rows)], output_dtypes=[x.dtype])


def qmv_launch(x, w, scales, biases, group_size: int = 64, bits: int = 4) -> Launch:
    """x (M, K) . dequantize(w)^T -> (M, N)."""
    check(x, w, scales, biases, group_size, bits)
    return _launch(QMV, [x, w, scales, biases], x, w.shape[0], group_size, bits)


def qmv_swiglu_launch(x, gate, up, group_size: int = 64, bits: int = 4) -> Launch:
    """gate, up: (w, scales, biases) triplets -> silu(x . Wg^T) * (x . Wu^T), (M, N)."""
    check(x, *gate, group_size, bits)
    check(x, *up, group_size, bits)
    if gate[0].shape != up[0].shape:
        raise ValueError(f"gate and up weights differ in shape: {gate[0].shape} vs {up[0].shape}")
    return _launch(QMV_SWIGLU, [x, gate[0], gate[1], gate[2], up[0], up[1], up[2]], x, gate[0].shape[0],
                   group_size, bits)
