"""Simulated Metal for tests: the dispatch behaves exactly as on a Mac GPU (self-test, timing, fallback, verdict
cache) with a stand-in for `mx.fast.metal_kernel`.

    with simulate_metal(runner) as dispatch:   # runner(launch) -> list of outputs
        tokens = generate(...)
    dispatch.verdicts()

`emulator_runner` is a runner with the real kernels' numbers (the C++ emulator). It needs concrete inputs, so
it runs eagerly only: inside an `mx.compile` trace a kernel call fails and the dispatch falls back (with a notice)
to the built-in. Self-tests and timings use fresh arrays, so they work there too.
"""

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import mlx.core as mx

from . import dispatch
from .launch import Launch
from .plan import Runner
from .verdicts import Verdicts

DEVICE = "simulated"  # the device name the verdicts are filed under


@contextmanager
def simulate_metal(runner: Runner, cache_dir: Optional[Path] = None, mode: Optional[str] = None
                   ) -> Iterator[dispatch.Dispatch]:
    """The process's dispatch becomes one on a pretend GPU that launches through `runner`, with its verdicts in
    `cache_dir` (a fresh temporary folder when None) and `mode` (None: MLXMODELS_KERNELS); restored on exit."""
    with tempfile.TemporaryDirectory(prefix="mlxmodels-kernels-") as tmp:
        folder = Path(tmp) if cache_dir is None else Path(cache_dir)
        simulated = dispatch.Dispatch(runner=runner, on_gpu=lambda: True, mode=mode, device=DEVICE,
                                      verdicts=Verdicts(folder, mx.__version__, DEVICE))
        previous = dispatch.swap(simulated)
        try:
            yield simulated
        finally:
            dispatch.swap(previous)


def emulator_runner(launch: Launch) -> Sequence[mx.array]:
    """The launch run once (threads in forward order) in the emulator; eager only (see above)."""
    from . import emulator  # tests only: it compiles C++ on first use

    return emulator.run(launch, orders=("forward",))[0]
