"""Launches of the quantized matrix-vector kernels (qmv.metal, qmv_swiglu.metal) on MLX's affine layout, and their
plans for the dispatch (plan.py)."""

from functools import lru_cache
from typing import Optional

import mlx.core as mx

from . import draw
from .launch import MAX_CONSTANT_ARRAY_SIZE, KernelDef, Launch
from .plan import Plan, Unsupported, variant

QMV = KernelDef("qmv", "qmv.metal", ("x", "w", "scales", "biases"), ("y",), header_file="qmv_common.metal")
QMV_SWIGLU = KernelDef(
    "qmv_swiglu", "qmv_swiglu.metal",
    ("x", "w_gate", "scales_gate", "biases_gate", "w_up", "scales_up", "biases_up"), ("y",),
    header_file="qmv_common.metal")

ROWS, NSG = 4, 2  # MLX's qmv: 4 outputs per SIMD-group, 2 SIMD-groups, so 8 output rows per threadgroup of 64
FLOATS = (mx.float32, mx.float16, mx.bfloat16)

# MLX's qmv batch limit (get_qmv_batch_limit in mlx/backend/metal/quantized.cpp, ml-explore/mlx@846d176):
# mx.quantized_matmul runs its matrix-vector kernels while x has fewer rows than the limit and a matrix-matrix
# kernel (qmm, which reads each weight tile once for many rows) from there on. The limit depends on the GPU's
# architecture, "applegpu_g<generation><size letter>" (13 = M1 ... 17 = M5; letter p phone, g base/pro, s max,
# d ultra), and on K and N. Rows: (lowest generation, ultra or not, limits for K and N both <= 2048, both <= 4096,
# larger); the first row that matches decides, as MLX's branches do.
QMV_BATCH_LIMITS = (
    (17, False, (33, 25, 13)),
    (15, False, (13, 15, 13)),
    (0, True, (32, 18, 12)),
    (13, False, (14, 10, 6)),
    (0, False, (18, 12, 10)),
)
# Where the architecture is unknown (no Metal GPU, an MLX whose device_info lacks it): the smallest limit of any
# architecture, so our kernel never takes rows that MLX gives to qmm on some Mac.
CONSERVATIVE_LIMITS = tuple(min(limits[i] for *_, limits in QMV_BATCH_LIMITS) for i in range(3))
MAX_ROWS = max(max(limits) for *_, limits in QMV_BATCH_LIMITS) - 1  # the most rows any device gives the kernels


@lru_cache(maxsize=1)
def gpu_architecture() -> str:
    """MLX's name for the GPU ("applegpu_g15s"; MLX_METAL_GPU_ARCH overrides it, as in MLX), or "" without one."""
    try:
        info = mx.device_info(mx.gpu) if hasattr(mx, "device_info") else mx.metal.device_info()
    except (RuntimeError, ValueError):
        return ""
    arch = info.get("architecture", "")
    return arch if isinstance(arch, str) and arch.startswith("applegpu") else ""


def qmv_batch_limit(K: int, N: int, arch: str) -> int:
    """The number of rows of x from which mx.quantized_matmul(transpose=True) leaves qmv for qmm on `arch`."""
    size = 0 if K <= 2048 and N <= 2048 else 1 if K <= 4096 and N <= 4096 else 2
    if not arch.startswith("applegpu"):
        return CONSERVATIVE_LIMITS[size]
    digits = [c if c.isdigit() else "0" for c in arch[-3:-1]]  # MLX reads a non-digit as 0
    generation, ultra = int("".join(digits)), arch[-1] == "d"
    for lowest, for_ultra, limits in QMV_BATCH_LIMITS:
        if generation >= lowest and ultra == for_ultra:
            return limits[size]
    raise AssertionError("the last rows of QMV_BATCH_LIMITS match every architecture")


def max_rows(K: int, N: int, arch: Optional[str] = None) -> int:
    """The most rows of x our qmv kernels take for a (N, K) weight: those MLX's own qmv would take (arch: this
    process's GPU when None)."""
    return qmv_batch_limit(K, N, gpu_architecture() if arch is None else arch) - 1


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
        raise Unsupported(f"x, scales and biases must share a float dtype, got {x.dtype}, {scales.dtype}, "
                          f"{biases.dtype}")


def _launch(kernel, inputs, x, n_rows, group_size, bits) -> Launch:
    M = x.shape[0]
    # rows of x in the fastest grid dimension (threadgroup_position_in_grid.x = m), as MLX's qmv does
    return Launch(kernel, inputs, [("T", x.dtype), ("BITS", bits), ("GS", group_size), ("ROWS", ROWS), ("NSG", NSG)],
                  grid=(32 * M, NSG * -(-n_rows // (ROWS * NSG)), 1), threadgroup=(32, NSG, 1),
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


def _rows(x, N: int):
    """(..., K) -> (M, K), refused above the rows MLX's own qmv takes for an (N, K) weight on this GPU."""
    if x.ndim < 1 or x.shape[-1] < 1:
        raise Unsupported(f"x must have a last axis of K >= 1 values, got shape {x.shape}")
    limit = max_rows(x.shape[-1], N)
    if x.size // x.shape[-1] > limit:
        raise Unsupported(f"the qmv kernels take 1 to {limit} rows of x for a {N} x {x.shape[-1]} weight (MLX's "
                          f"matrix-matrix kernel reads the weights fewer times beyond), got shape {x.shape}")
    return x.reshape(-1, x.shape[-1])  # (..., K) -> (M, K)


def _plan(launch: Launch, x) -> Plan:
    M, K = launch.output_shapes[0][0], x.shape[-1]
    return Plan(variant(launch), f"M{M} N{launch.output_shapes[0][1]} K{K}",
                lambda runner: runner(launch)[0].reshape(*x.shape[:-1], -1))


def qmv_plan(x, w, scales, biases, group_size: int = 64, bits: int = 4) -> Plan:
    """x (..., K) -> (..., N)."""
    return _plan(qmv_launch(_rows(x, w.shape[0]), w, scales, biases, group_size, bits), x)


def qmv_swiglu_plan(x, gate, up, group_size: int = 64, bits: int = 4) -> Plan:
    return _plan(qmv_swiglu_launch(_rows(x, gate[0].shape[0]), gate, up, group_size, bits), x)


def _random_quantized(N: int, K: int, like_scales, bits: int, group_size: int):
    w = draw.randint(0, 1 << 30, (N, K * bits // 32)).astype(mx.uint32) * 3  # every bit pattern's share
    scales = (draw.uniform(0.01, 0.1, (N, K // group_size))).astype(like_scales.dtype)
    biases = (draw.uniform(-0.5, 0.5, (N, K // group_size))).astype(like_scales.dtype)
    mx.eval(w, scales, biases)
    return w, scales, biases


def _constant_inputs(N: int, K: int, group_size: int, bits: int):
    """Which of w and scales/biases MLX passes in the constant address space (part of the compiled variant)."""
    return N * K * bits // 32 < MAX_CONSTANT_ARRAY_SIZE, N * (K // group_size) < MAX_CONSTANT_ARRAY_SIZE


def _small(M: int, N: int, K: int, group_size: int, bits: int):
    """Fewer rows of x, outputs and columns for the self-test, with the same inputs in `constant` as the real call
    (a 1 x 1024 weight has 8 scales at groups of 128, 4 at 512 columns) so that it compiles exactly what the real
    call compiles; M within the row limit of the smaller shape (the template does not depend on M)."""
    N2, K2 = min(N, 40), min(K, 512)
    while _constant_inputs(N2, K2, group_size, bits) != _constant_inputs(N, K, group_size, bits):
        K2 += group_size  # ends at K2 = K at the latest: N2 = N where N is small enough for any input to be constant
    return min(M, max_rows(K2, N2)), N2, K2


def qmv_sample(x, w, scales, biases, group_size: int = 64, bits: int = 4):
    M2, N2, K2 = _small(_rows(x, w.shape[0]).shape[0], w.shape[0], x.shape[-1], group_size, bits)
    x2 = draw.normal((M2, K2)).astype(x.dtype)
    return (x2, *_random_quantized(N2, K2, scales, bits, group_size), group_size, bits)


def qmv_swiglu_sample(x, gate, up, group_size: int = 64, bits: int = 4):
    N = gate[0].shape[0]
    M2, N2, K2 = _small(_rows(x, N).shape[0], N, x.shape[-1], group_size, bits)
    x2 = draw.normal((M2, K2)).astype(x.dtype)
    return (x2, _random_quantized(N2, K2, gate[1], bits, group_size),
            _random_quantized(N2, K2, up[1], bits, group_size), group_size, bits)


def qmv_timing(x, w, scales, biases, group_size: int = 64, bits: int = 4):
    x2 = draw.normal(_rows(x, w.shape[0]).shape).astype(x.dtype)
    return (x2, *_random_quantized(w.shape[0], x.shape[-1], scales, bits, group_size), group_size, bits)


def qmv_swiglu_timing(x, gate, up, group_size: int = 64, bits: int = 4):
    N, K = gate[0].shape[0], x.shape[-1]
    x2 = draw.normal(_rows(x, N).shape).astype(x.dtype)
    return (x2, _random_quantized(N, K, gate[1], bits, group_size), _random_quantized(N, K, up[1], bits, group_size),
            group_size, bits)
