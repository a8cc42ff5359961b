"""Compile a launch's generated source with the system g++ into a runner executable, cached by content.

The translation unit is prelude.h + the source MLX would compile (signature.write_source) + a launcher that calls
the kernel for one GPU thread. The only edit to the source: a threadgroup array declaration
(`threadgroup float buf[N][M];`) becomes a reference to per-threadgroup storage from the runtime, because in C++
a local array would belong to one thread. The edit keeps every line where it was, so error lines match.
The cache key hashes the prelude, the runtime, the generated source and the compiler, so any edit rebuilds.
"""

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import List

from ..launch import Launch
from .signature import Param, kernel_name, params, template_def, write_source

HERE = Path(__file__).parent
FLAGS = ["-std=c++17", "-O1", "-fno-strict-aliasing", "-Wno-attributes", "-fno-exceptions"]

_TG_DECL = re.compile(
    r"\bthreadgroup\s+(?P<type>[A-Za-z_][\w:]*(?:\s*<[^;{}()]*?>)?)\s+(?P<name>[A-Za-z_]\w*)\s*"
    r"(?P<dims>(?:\[[^\];]+\]\s*)*);"
)


class BuildError(RuntimeError):
    """The kernel did not compile (message: g++'s errors)."""


def cache_dir() -> Path:
    root = os.environ.get("MLXMODELS_EMULATOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mlxmodels", "emulator")
    return Path(root)


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if not cxx:
        raise BuildError("the Metal emulator needs a C++17 compiler: install g++ (Debian: apt-get install g++)")
    return cxx


def rewrite_threadgroup(source: str) -> str:
    """threadgroup T name[A][B]; -> a reference to the threadgroup's shared storage for this declaration."""
    site = iter(range(1, 1 << 20))

    def repl(m: re.Match) -> str:
        t, name, dims = m.group("type"), m.group("name"), re.sub(r"\s+", "", m.group("dims"))
        full = f"{t}{dims}"
        return (f"auto& {name} = *static_cast<{t}(*){dims}>(mtl_rt_tg_alloc({next(site)}, sizeof({full}), "
                f"alignof({t})));" if dims else
                f"auto& {name} = *static_cast<{t}*>(mtl_rt_tg_alloc({next(site)}, sizeof({t}), alignof({t})));")

    return _TG_DECL.sub(repl, source)


def _arg(p: Param) -> str:
    if p.kind == "attribute":
        return f"mtl_u3(a->{p.name})" if p.ctype == "uint3" else f"a->{p.name}"
    if p.kind in ("scalar", "ndim"):
        return f"*(const {p.ctype}*)b[{p.buffer}]"
    if p.kind == "output":
        return f"({p.ctype}*)b[{p.buffer}]"
    return f"(const {p.ctype}*)b[{p.buffer}]"


def translation_unit(launch: Launch) -> str:
    name = kernel_name(launch)
    call = name + (template_def(launch) if launch.template else "")
    args = ",\n    ".join(_arg(p) for p in params(launch))
    return (
        '#include "prelude.h"\n'
        f'#line 1 "{launch.kernel.name}.generated.metal"\n'
        + rewrite_threadgroup(write_source(launch))
        + f'\n#line 1 "launcher"\nextern "C" void mtl_kernel_entry(void** b, const mtl_attrs* a) {{\n  {call}(\n    {args});\n}}\n'
    )


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def _compile(args: List[str], what: str) -> None:
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"g++ could not compile {what}:\n{r.stderr[-6000:]}")


@lru_cache(maxsize=None)
def _version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout


def _atomic_build(target: Path, build) -> Path:
    """Build into a temporary name and rename, so parallel runs never see a half-written file."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    os.close(fd)
    try:
        build(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def runtime_object() -> Path:
    cxx = compiler()
    files = [(HERE / f).read_text() for f in ("runtime.cpp", "abi.h")]
    target = cache_dir() / f"runtime-{_digest(*files, _version(cxx), *FLAGS)}.o"
    return _atomic_build(target, lambda out: _compile(
        [cxx, *FLAGS, "-I", str(HERE), "-c", str(HERE / "runtime.cpp"), "-o", out], "the emulator runtime"))


def runner(launch: Launch) -> Path:
    """The executable that runs this launch's kernel (built once per distinct generated source)."""
    cxx = compiler()
    runtime = runtime_object()
    tu = translation_unit(launch)
    prelude = (HERE / "prelude.h").read_text() + (HERE / "abi.h").read_text()
    target = cache_dir() / f"{launch.kernel.name}-{_digest(tu, prelude, runtime.name, _version(cxx), *FLAGS)}"

    def build(out: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "kernel.cpp"
            src.write_text(tu)
            _compile([cxx, *FLAGS, "-I", str(HERE), str(src), str(runtime), "-o", out], f"kernel {launch.kernel.name}")

    return _atomic_build(target, build)
