"""Kernel tests run twice where they can: in the emulator (Linux, g++) and on a real Metal GPU (`pytest -m metal`).

`backend` is the parameter; `outputs(backend, launch)` returns one list of outputs per run: three runs (forward,
reversed and shuffled thread order) in the emulator, one on the GPU.
"""

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict

import mlx.core as mx
import numpy as np
import pytest

from metal_kernels import emulator
from metal_kernels.launch import KernelDef, Launch, kernel_name, run_metal


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


@dataclass(frozen=True)
class InlineKernel(KernelDef):
    """A kernel whose header is given as text (tests: helpers a planted bug calls)."""

    header_text: str = ""

    @property
    def header(self) -> str:
        return self.header_text


def test_launch(body: str, inputs=(), header: str = "", out_shape=(64,), out_dtype=mx.float32, grid=(64, 1, 1),
                tg=(64, 1, 1), template=(), init_value=None) -> Launch:
    """A launch of `body` with inputs in0, in1, ... and one output `out`; each distinct text is its own kernel."""
    names = tuple(f"in{i}" for i in range(len(inputs)))
    k = InlineKernel("test_" + hashlib.sha256((header + body).encode()).hexdigest()[:10], "", names, ("out",),
                     header_text=header)
    return Launch(k, list(inputs), list(template), grid, tg, [out_shape], [out_dtype], init_value, source=body)


test_launch.__test__ = False  # a helper, not a test


def _recorded(plan) -> list:
    """The launches a plan makes, run through a runner that records them and returns zeros of the output shapes."""
    seen = []

    def runner(launch):
        seen.append(launch)
        return [mx.zeros(s, d) for s, d in zip(launch.output_shapes, launch.output_dtypes)]

    plan.run(runner)
    return seen


@lru_cache(maxsize=None)
def real_launches() -> Dict[str, Launch]:
    """Every real kernel in the variants the entry points plan: dtypes, 4/8 bits, inputs in constant or device
    memory (a 1 x 32 weight is 4 words; a batch of 3 passes context_lens as constant), one and two passes."""
    from metal_kernels import paged, quantized

    plans = []
    for dt in (mx.float32, mx.float16, mx.bfloat16):
        for bits in (4, 8):
            for M, N, K in ((1, 40, 256), (3, 1, 32)):
                w, s, b = mx.quantize(mx.zeros((N, K), dt), group_size=32, bits=bits)
                plans.append(quantized.qmv_plan(mx.zeros((M, K), dt), w, s, b, 32, bits))
                plans.append(quantized.qmv_swiglu_plan(mx.zeros((M, K), dt), (w, s, b), (w, s, b), 32, bits))
        for B, blocks in ((3, 2), (8, 2), (1, 2048)):  # 2048 blocks of 16: 32k tokens, where MLX splits
            q, pool = mx.zeros((B, 8, 64), dt), mx.zeros((4, 16, 2, 64), dt)
            tables, lens = mx.zeros((B, blocks), mx.int32), mx.ones((B,), mx.int32)
            plans.append(paged.paged_attention_plan(q, pool, pool, tables, lens, 0.125, softcap=2.0, window=4))
            plans.append(paged.paged_mla_plan(mx.zeros((B, 16, 64), dt), mx.zeros((B, 16, 32), dt),
                                              mx.zeros((4, 16, 96), dt), tables, lens, 0.1))
    return {kernel_name(x): x for plan in plans for x in _recorded(plan)}
