"""Runs the Metal kernels' exact sources on Linux (tests only): a C++ prelude emulating the Metal execution model,
one cooperative fiber per GPU thread. See build.py (compile, cache), runtime.cpp (scheduler), prelude.h (Metal)."""

from .build import BuildError, MetalRejects, cache_dir, check_source, rewrite_threadgroup, runner, translation_unit
from .lint import lint
from .run import ORDERS, EmulatorError, available, run
from .signature import kernel_name, mlx_source, write_source
from .spaces import AddressSpaceError, check_spaces, clang

__all__ = ["ORDERS", "AddressSpaceError", "BuildError", "EmulatorError", "MetalRejects", "available", "cache_dir",
           "check_source", "check_spaces", "clang", "kernel_name", "lint", "mlx_source", "rewrite_threadgroup", "run",
           "runner", "translation_unit", "write_source"]
