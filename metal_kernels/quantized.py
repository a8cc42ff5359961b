"""Launches of the quantized matrix-vector kernels (qmv.metal, qmv_swiglu.metal) on MLX's affine layout, and their
plans for the dispatch (plan.py)."""

import mlx.core as mx

from .launch import KernelDef, Launch
from .plan import Plan, Unsupported, variant

QMV = KernelDef("qmv", "qmv.metal", ("x", "w", "scales", "biases"), ("y",), header_file="qmv_common.metal")
QMV_SWIGLU = KernelDef(
    "qmv_swiglu", "qmv_swiglu.metal",
    ("x", "w_gate", "scales_gate", "biases_gate", "w_up", "scales_up", "biases_up"), ("y",),
    header_file="qmv_common.metal")

ROWS, NSG = 4, 2  # 8 output rows per threadgroup of 64 threads
MAX_ROWS = 16  # rows of x; beyond them a matrix-matrix kernel (MLX's) reads the weights fewer times
FLOATS = (mx.float32, mx.float16, mx.bfloat16)


def check(x, w, scales, biases, group_size: int, bits: int) -> None:
    """Raises Unsupported (a ValueError) unless the kernels take exactly these inputs."""
    if bits not in (4, 8) or group_size not in (32, 64, 128):
        raise Unsupported(f"the qmv kernels take 4 or 8 bits and groups of 32, 64 or 128; got {bits} bits, "
                         f"group {group_size}")
    M, K = x.shape
    N = w.shape[0]
    if w.dtype != mx.uint32 or w.shape != (N, K * bits // 32):
        raise Unsupported(f"w must be uint32 (N, K * bits / 32) = ({N}, {K * bits // 32}), got {w.dtype} {w.shape}")
    if K % group_size or scales.shape != (N, K // group_size) or biases.shape != scales.shape:
        raise Unsupported(f"K={K} must be a multiple of the group size {group_size}; scales and biases must be "
                         f"({N}, {K // group_size}), got {scales.shape} and {biases.shape}")
    if x.dtype not in FLOATS or not x.dtype == scales.dtype == biases.dtype:
        raise Unsupported(f"x, scales and biases must share a float dtype, got {x.dtype}, {scales.dtype}, {biases.dtype}")


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
        raise Unsupported(f"gate and up weights differ in shape: {gate[0].shape} vs {up[0].shape}")
    return _launch(QMV_SWIGLU, [x, gate[0], gate[1], gate[2], up[0], up[1], up[2]], x, gate[0].shape[0],
                   group_size, bits)


def _rows(x):
    if x.ndim < 1 or x.size // max(x.shape[-1], 1) > MAX_ROWS:
        raise Unsupported(f"the qmv kernels take 1 to {MAX_ROWS} rows of x, got shape {x.shape}")
    return x.reshape(-1, x.shape[-1])  # (..., K) -> (M, K)


def _plan(launch: Launch, x) -> Plan:
    M, K = launch.output_shapes[0][0], x.shape[-1]
    return Plan(variant(launch), f"M{M} N{launch.output_shapes[0][1]} K{K}",
                lambda runner: runner(launch)[0].reshape(*x.shape[:-1], -1))


def qmv_plan(x, w, scales, biases, group_size: int = 64, bits: int = 4) -> Plan:
    """x (..., K) -> (..., N)."""
    return _plan(qmv_launch(_rows(x), w, scales, biases, group_size, bits), x)


def qmv_swiglu_plan(x, gate, up, group_size: int = 64, bits: int = 4) -> Plan:
    return _plan(qmv_swiglu_launch(_rows(x), gate, up, group_size, bits), x)


def _random_quantized(N: int, K: int, like_scales, bits: int, group_size: int):
    w = mx.random.randint(0, 1 << 30, (N, K * bits // 32)).astype(mx.uint32) * 3  # every bit pattern's share
    scales = (mx.random.uniform(0.01, 0.1, (N, K // group_size))).astype(like_scales.dtype)
    biases = (mx.random.uniform(-0.5, 0.5, (N, K // group_size))).astype(like_scales.dtype)
    mx.eval(w, scales, biases)
    return w, scales, biases


def _small(N: int, K: int):
    """Fewer rows and columns, never below the constant-buffer threshold where the real ones are above it: the
    self-test compiles exactly what the real call compiles (kernel_name sees which inputs go to `constant`)."""
    return min(N, 40), (K if K <= 512 else 512)


def qmv_sample(x, w, scales, biases, group_size: int = 64, bits: int = 4):
    N2, K2 = _small(w.shape[0], x.shape[-1])
    x2 = mx.random.normal((_rows(x).shape[0], K2)).astype(x.dtype)
    return (x2, *_random_quantized(N2, K2, scales, bits, group_size), group_size, bits)


def qmv_swiglu_sample(x, gate, up, group_size: int = 64, bits: int = 4):
    N2, K2 = _small(gate[0].shape[0], x.shape[-1])
    x2 = mx.random.normal((_rows(x).shape[0], K2)).astype(x.dtype)
    return (x2, _random_quantized(N2, K2, gate[1], bits, group_size), _random_quantized(N2, K2, up[1], bits, group_size),
            group_size, bits)


def qmv_timing(x, w, scales, biases, group_size: int = 64, bits: int = 4):
    x2 = mx.random.normal(_rows(x).shape).astype(x.dtype)
    return (x2, *_random_quantized(w.shape[0], x.shape[-1], scales, bits, group_size), group_size, bits)


def qmv_swiglu_timing(x, gate, up, group_size: int = 64, bits: int = 4):
    N, K = gate[0].shape[0], x.shape[-1]
    x2 = mx.random.normal(_rows(x).shape).astype(x.dtype)
    return (x2, _random_quantized(N, K, gate[1], bits, group_size), _random_quantized(N, K, up[1], bits, group_size),
            group_size, bits)
