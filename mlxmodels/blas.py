"""A fast BLAS for MLX's CPU backend on Linux.

The `mlx[cpu]` wheel links the reference (netlib) BLAS. Loading Debian's OpenBLAS (`libopenblas0-pthread`) into
the process before `mlx.core` makes MLX resolve its BLAS symbols there: float32 matmuls, hence prefill, get
~20-40x faster with the same results within float tolerance (docs/BENCHMARKS.md). Opt out with
MLXMODELS_OPENBLAS=0. Nothing happens on macOS (MLX uses Accelerate) or when OpenBLAS is not installed.
"""

import ctypes
import glob
import os
import sys

CANDIDATES = ("/usr/lib/*/openblas-pthread/libopenblas.so.0", "/usr/lib/*/libopenblas.so.0")


def openblas_loaded() -> bool:
    """Whether OpenBLAS is mapped into this process (by us or by LD_PRELOAD)."""
    try:
        with open("/proc/self/maps") as f:
            return "libopenblas" in f.read()
    except OSError:
        return False


def enable_openblas() -> bool:
    """Load OpenBLAS globally if we may and it is there; must run before `import mlx.core` to take effect."""
    if not sys.platform.startswith("linux") or os.environ.get("MLXMODELS_OPENBLAS", "1") == "0":
        return False
    if "mlx.core" in sys.modules:  # too late to matter unless it was preloaded
        return openblas_loaded()
    for pattern in CANDIDATES:
        for path in sorted(glob.glob(pattern)):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return True
            except OSError:
                continue
    return False


FAST_BLAS = enable_openblas()
