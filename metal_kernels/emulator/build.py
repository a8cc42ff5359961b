"""Compile a launch's generated source with the system g++ into a runner executable, cached by content.

Before compiling, the source must pass what Metal's compiler would check and g++ cannot: the MSL lint (lint.py)
and, where clang is installed, the address-space check (spaces.py). The translation unit is prelude.h + the
source MLX would compile (signature.write_source) + a launcher that calls the kernel for one GPU thread. The only
edit to the source: a threadgroup array declaration (`threadgroup float buf[N][M];`) becomes a reference to
per-threadgroup storage from the runtime, because in C++ a local array would belong to one thread. The edit keeps
every line where it was, so error lines match. The cache key hashes the prelude, the runtime, the generated source
and the compiler, so any edit rebuilds.
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
from .lint import lint
from .signature import Param, kernel_name, params, template_def, write_source

HERE = Path(__file__).parent
FLAGS = ["-std=c++17", "-O1", "-fno-strict-aliasing", "-Wno-attributes", "-fno-exceptions"]

_TG_DECL = re.compile(
    r"\bthreadgroup\s+(?P<type>[A-Za-z_][\w:]*(?:\s*<[^;{}()]*?>)?)\s+(?P<name>[A-Za-z_]\w*)\s*"
    r"(?P<dims>(?:\[[^\];]+\]\s*)*);"
)
_INSTANTIATION_ATTRS = re.compile(r'^template \[\[host_name\("[^"]*"\)\]\] \[\[kernel\]\] ', re.M)


class BuildError(RuntimeError):
    """The kernel did not compile (message: g++'s errors)."""


class MetalRejects(BuildError):
    """The source compiles with g++ but not on Metal (message: each finding with its line)."""


def cache_dir() -> Path:
    root = os.environ.get("MLXMODELS_EMULATOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mlxmodels", "emulator")
    return Path(root)


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if not cxx:
        raise BuildError("the Metal emulator needs a C++17 compiler: install g++ (Debian: apt-get install g++)")
    return cxx


def rewrite_threadgroup(source: str, spaces: bool = False) -> str:
    """threadgroup T name[A][B]; -> an accessor of the threadgroup's shared storage for this declaration, which
    checks bounds and records accesses for the race check (spaces=True: a plain reference in the threadgroup
    address space, for the address-space check)."""
    site = iter(range(1, 1 << 20))

    def repl(m: re.Match) -> str:
        t, name, dims = m.group("type"), m.group("name"), re.sub(r"\s+", "", m.group("dims"))
        sid = next(site)
        alloc = f'mtl_rt_tg_alloc({sid}, sizeof({t}{dims}), alignof({t}), "{name}", sizeof({t}))'
        if spaces:
            return f"auto& {name} = *(threadgroup {t}(*){dims}){alloc};" if dims else \
                f"auto& {name} = *(threadgroup {t}*){alloc};"
        if dims:  # an accessor that checks bounds and records each access (prelude.h, mtl_tg)
            sizes = ", ".join(f"({d})" for d in re.findall(r"\[([^\]]+)\]", dims))
            return f'mtl_tg<{t}, {sizes}> {name}({sid}, "{name}");'
        return f"auto& {name} = *static_cast<{t}*>({alloc});"  # a scalar: a plain reference, not race-checked

    return _TG_DECL.sub(repl, source)


def kernel_source(launch: Launch, spaces: bool = False) -> str:
    """The prelude's include, then the generated source with its threadgroup declarations rewritten; its lines
    are numbered as in the generated source, so compiler errors and runtime messages name the kernel's lines."""
    source = rewrite_threadgroup(write_source(launch), spaces)
    if spaces:  # clang takes no attribute list in an explicit instantiation (Metal's clang does)
        source = _INSTANTIATION_ATTRS.sub("template ", source)
    return f'#include "prelude.h"\n#line 1 "{launch.kernel.name}.generated.metal"\n' + source


def check_source(launch: Launch) -> None:
    """Raises MetalRejects for anything the MSL lint finds in the generated source."""
    findings = lint(write_source(launch))
    if findings:
        where = f"{launch.kernel.name}.generated.metal"
        raise MetalRejects(f"Metal would reject kernel {launch.kernel.name}:\n"
                           + "\n".join(f"  {where}:{f.line}: {f.message}" for f in findings))


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
        kernel_source(launch)
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


def on_source(text: str, use):
    """use(path) of a temporary kernel.cpp holding `text`."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.cpp"
        src.write_text(text)
        return use(str(src))


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

    return _atomic_build(target, lambda out: on_source(tu, lambda src: _compile(
        [cxx, *FLAGS, "-I", str(HERE), src, str(runtime), "-o", out], f"kernel {launch.kernel.name}")))
