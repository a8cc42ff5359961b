"""Run a launch in the emulator: write its buffers, run the cached runner once per thread order, read outputs."""

import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List, Sequence

import mlx.core as mx
import numpy as np

from ..launch import Launch
from .build import check_source, runner
from .signature import params
from .spaces import check_spaces

ORDERS = ("forward", "reverse", "shuffle")


class EmulatorError(RuntimeError):
    """The kernel misbehaved in the emulator: out-of-bounds access, threadgroup race, barrier divergence, deadlock,
    time out."""


def available() -> bool:
    """The emulator needs Linux (ucontext fibers) and a C++ compiler."""
    return platform.system() == "Linux" and shutil.which("g++") is not None


def _to_numpy(a: mx.array) -> np.ndarray:
    if a.dtype == mx.bfloat16:  # numpy has no bfloat16: move the bits
        return np.array(a.view(mx.uint16))
    return np.array(a)


def _from_bytes(data: bytes, shape, dtype) -> mx.array:
    if dtype == mx.bfloat16:
        return mx.array(np.frombuffer(data, np.uint16).reshape(shape)).view(mx.bfloat16)
    np_dtype = np.dtype(str(dtype).split(".")[-1].replace("bool_", "bool"))
    return mx.array(np.frombuffer(data, np_dtype).reshape(shape))


def _fill_hex(value: float, dtype) -> str:
    return _to_numpy(mx.array([value], dtype)).tobytes().hex()


def run(launch: Launch, orders: Sequence[str] = ORDERS, seed: int = 0, timeout: float = 120) -> List[List[mx.array]]:
    """-> outputs per order: result[i][j] is output j of the run under orders[i] ("shuffle" uses seed + i).

    First the checks Metal's compiler makes and g++ does not (MSL lint, address spaces), raising a BuildError.
    Then the runs, which stop with an EmulatorError at a threadgroup race or an out-of-bounds access: even runs
    place every buffer and threadgroup array against the guard page after it, odd runs against the one before it,
    so the default three orders check both ends."""
    check_source(launch)
    check_spaces(launch)
    exe = runner(launch)
    k = launch.kernel
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lines = ["grid %d %d %d" % tuple(launch.grid), "threadgroup %d %d %d" % tuple(launch.threadgroup)]
        arrays = dict(zip(k.input_names, launch.inputs))
        outputs = dict(zip(k.output_names, zip(launch.output_shapes, launch.output_dtypes)))
        for p in params(launch):
            if p.kind == "attribute":
                continue
            path = tmp / f"b{p.buffer}"
            if p.kind == "output":
                shape, dtype = outputs[p.name]
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.size
                init = "nan" if launch.init_value is None else "fill " + _fill_hex(launch.init_value, dtype)
                lines.append(f"buffer {p.name} out {nbytes} {path} {init}")
                continue
            if p.kind in ("input", "scalar"):
                data = np.ascontiguousarray(_to_numpy(arrays[p.name])).tobytes()
            else:
                a = arrays[p.name[: -len(p.kind) - 1]]
                strides = np.cumprod((list(a.shape[1:]) + [1])[::-1])[::-1]
                data = {"shape": np.array(a.shape, np.int32), "strides": np.array(strides, np.int64),
                        "ndim": np.array([a.ndim], np.int32)}[p.kind].tobytes()
            path.write_bytes(data)
            lines.append(f"buffer {p.name} in {len(data)} {path}")
        for i, order in enumerate(orders):
            lines.append(f"order {order} {seed + i}")
        (tmp / "manifest").write_text("\n".join(lines) + "\n")
        try:
            r = subprocess.run([str(exe), str(tmp / "manifest")], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EmulatorError(f"{k.name}: no result after {timeout:.0f} s (an endless loop?)") from None
        if r.returncode != 0:
            raise EmulatorError(f"{k.name}: {r.stderr.strip() or f'runner exited with {r.returncode}'}")
        result = []
        for i in range(len(orders)):
            outs = []
            for p in params(launch):
                if p.kind == "output":
                    shape, dtype = outputs[p.name]
                    outs.append(_from_bytes((tmp / f"b{p.buffer}.{i}").read_bytes(), shape, dtype))
            result.append(outs)
        return result
