"""Kernel tests run twice where they can: in the emulator (Linux, g++) and on a real Metal GPU (`pytest -m metal`).

`backend` is the parameter; `outputs(backend, launch)` returns one list of outputs per run: three runs (forward,
reversed and shuffled thread order) in the emulator, one on the GPU.
"""

import mlx.core as mx
import numpy as np
import pytest

from metal_kernels import emulator
from metal_kernels.launch import run_metal


@pytest.fixture(params=["emulator", pytest.param("metal", marks=pytest.mark.metal)])
def backend(request):
    if request.param == "metal" and not mx.metal.is_available():
        pytest.skip("no Metal GPU here")
    if request.param == "emulator" and not emulator.available():
        pytest.skip("the Metal emulator needs Linux and g++")
    return request.param


def outputs(backend: str, launch):
    if backend == "emulator":
        return emulator.run(launch)
    out = run_metal(launch)
    mx.eval(out)
    return [list(out)]


def f64(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32)).astype(np.float64)


def check(backend: str, launch, want: np.ndarray, atol: float, rtol: float = 0.0) -> np.ndarray:
    """Every run gives bit-identical results (no race changes any value), close to `want`."""
    runs = [f64(r[0]) for r in outputs(backend, launch)]
    for i, r in enumerate(runs[1:], start=1):
        np.testing.assert_array_equal(r, runs[0], err_msg=f"run {emulator.ORDERS[i]} differs from forward order")
    np.testing.assert_allclose(runs[0], want, atol=atol, rtol=rtol)
    return runs[0]
