"""Runs the Metal kernels' exact sources on Linux (tests only): a C++ prelude emulating the Metal execution model,
one cooperative fiber per GPU thread. See build.py (compile, cache), runtime.cpp (scheduler), prelude.h (Metal)."""

from .build import BuildError, cache_dir, rewrite_threadgroup, runner, translation_unit
from .run import ORDERS, EmulatorError, available, run
from .signature import kernel_name, mlx_source, write_source

__all__ = ["ORDERS", "BuildError", "EmulatorError", "available", "cache_dir", "kernel_name", "mlx_source",
           "rewrite_threadgroup", "run", "runner", "translation_unit", "write_source"]
