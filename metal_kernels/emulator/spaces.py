"""Address spaces checked: the generated source compiled a second time, by clang, with Metal's address spaces.

g++ erases `device`, `constant`, `threadgroup` and `thread`, so it accepts a pointer passed across them, which
Metal rejects: a helper taking `const device uint32_t*` handed an input that MLX passes as `constant` (inputs of
fewer than 8 elements) compiles here and fails on a Mac. clang has address spaces for any target: prelude.h in
check mode (MTL_ADDRESS_SPACES) makes `device`, `constant` and `threadgroup` spaces 1, 2 and 3 and `thread` the
default one, and the threadgroup rewrite yields threadgroup-space references, so clang reports such a call as
Metal's compiler would. Syntax and semantics only (-fsyntax-only, for an arm64 Mac target, which has _Float16),
cached by content; without clang the check is skipped with a warning.
"""

import os
import re
import shutil
import subprocess
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Optional

from ..launch import Launch
from .build import HERE, BuildError, _atomic_build, _digest, _version, cache_dir, kernel_source, on_source

FLAGS = ["-std=c++17", "--target=arm64-apple-macos", "-ffreestanding", "-nostdinc++", "-fsyntax-only",
         "-DMTL_ADDRESS_SPACES", "-Wno-unknown-attributes", "-ferror-limit=20"]

SPACES = {"1": "device", "2": "constant", "3": "threadgroup"}  # as prelude.h numbers them


class AddressSpaceError(BuildError):
    """clang, with Metal's address spaces, rejects the kernel (message: clang's errors)."""


def clang() -> Optional[str]:
    return os.environ.get("MLXMODELS_CLANG") or shutil.which("clang++") or shutil.which("clang")


@lru_cache(maxsize=None)
def _warn_once() -> None:
    warnings.warn("clang is not installed: the emulator skips its address-space check "
                  "(Debian: apt-get install clang)", stacklevel=3)


def check_spaces(launch: Launch) -> None:
    """Raises AddressSpaceError where clang with Metal's address spaces rejects the generated source."""
    cc = clang()
    if cc is None:
        _warn_once()
        return
    tu = kernel_source(launch, spaces=True)
    prelude = (HERE / "prelude.h").read_text() + (HERE / "abi.h").read_text()
    target = cache_dir() / f"spaces-{launch.kernel.name}-{_digest(tu, prelude, _version(cc), *FLAGS)}.ok"

    def check(out: str) -> None:
        r = on_source(tu, lambda src: subprocess.run([cc, *FLAGS, "-I", str(HERE), src], capture_output=True, text=True))
        if r.returncode != 0:
            errors = re.sub(r"address space '([123])'", lambda m: f"address space '{SPACES[m.group(1)]}'", r.stderr)
            errors = re.sub(r"__attribute__\(\(address_space\(([123])\)\)\)", lambda m: SPACES[m.group(1)], errors)
            raise AddressSpaceError(f"clang with Metal's address spaces rejects kernel {launch.kernel.name}, "
                                    f"as Metal would:\n{errors[-6000:]}")
        Path(out).write_text("ok\n")

    _atomic_build(target, check)
