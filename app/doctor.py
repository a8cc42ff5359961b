"""`mlxm doctor`: what this machine is and what our Metal kernels do on it, in one report to read or attach to a
bug report.

The system part (device, chip, memory, OS, Python, MLX, Metal, the default device) always prints. The kernel part
says whether the kernels are used here and, on a Metal GPU, asks the dispatch to check each kernel variant on
representative shapes (app/kernel_table.py): its self-test against the reference, and its speed against MLX's
built-in in this process, which is what `MLXMODELS_KERNELS=auto` decides by. Off a Metal GPU, `--emulate` runs the
same checks through the C++ emulator on small shapes: correctness only, its times mean nothing.

Nothing here may end in a traceback: each check that fails becomes one line in its own row.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, Tuple

DESCRIPTION = """Report this machine (device, chip, memory, OS, Python and MLX versions, Metal) and, on a Metal GPU,
each custom kernel's self-test and speed against MLX's built-in on representative shapes: microseconds per call,
GB/s read, and which one MLXMODELS_KERNELS=auto picks. --json FILE writes the whole report as JSON, to attach to a
bug report."""

NOT_USED = ("MLX runs on its CPU backend here (no Metal GPU); the kernels need a Metal GPU, so every entry point "
            "runs MLX's built-in ops")


def add_parser(sub):
    p = sub.add_parser("doctor", help="this machine, MLX, and each custom kernel's self-test and speed",
                       description=DESCRIPTION)
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON to FILE")
    p.add_argument("--quick", action="store_true", help="one shape per kernel")
    p.add_argument("--emulate", action="store_true",
                   help="without a Metal GPU: run each kernel's self-test in the emulator on small shapes "
                        "(correctness only; its times mean nothing)")
    p.set_defaults(func=run)
    return p


def run(args) -> None:
    if args.json:
        check_json_path(Path(args.json))  # before the checks, not after
    report = {"system": system(), "kernels": kernels(args.quick, args.emulate, _progress)}
    print(format_report(report))
    if args.json:
        write_json(Path(args.json), report)
        print(f"\nreport written to {args.json}")


def _progress(line: str) -> None:
    if sys.stderr.isatty():  # a person waits for the timings; in a pipe, stderr keeps to errors
        print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- system


def _safe(fn: Callable[[], object]) -> object:
    """A value, or one line saying why it could not be read."""
    from app.kernel_table import one_line

    try:
        return fn()
    except Exception as e:  # noqa: BLE001  (the report goes on whatever one probe meets)
        return f"unknown ({one_line(e)})"


def _device_info() -> dict:
    import mlx.core as mx

    if not hasattr(mx, "device_info"):  # MLX < 0.30
        return dict(mx.metal.device_info())
    return dict(mx.device_info(mx.gpu) if mx.metal.is_available() else mx.device_info())


def _chip() -> str:
    if platform.system() == "Darwin":
        return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_total() -> int:
    info = _device_info()
    if "memory_size" in info:
        return int(info["memory_size"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _os() -> str:
    mac = platform.mac_ver()[0]
    return f"macOS {mac} ({platform.machine()})" if mac else platform.platform()


def _ours() -> str:
    from importlib import metadata

    try:
        return metadata.version("mlxmodels")
    except metadata.PackageNotFoundError:
        return "not installed (run from a source checkout)"


def _device_name() -> str:
    from metal_kernels import dispatch

    return dispatch.device_name()


def system() -> dict:
    import mlx.core as mx

    return {
        "os": _safe(_os),
        "python": platform.python_version(),
        "mlx": _safe(lambda: mx.__version__),
        "mlxmodels": _safe(_ours),
        "chip": _safe(_chip),
        "device": _safe(_device_name),  # the GPU's name where there is one; it keys the remembered verdicts
        "memory_bytes": _safe(_memory_total),
        "recommended_working_set_bytes": _safe(lambda: _device_info().get("max_recommended_working_set_size")),
        "metal_available": _safe(mx.metal.is_available),
        "default_device": _safe(lambda: str(mx.default_device())),
    }


# ---------------------------------------------------------------- kernels


def use(d) -> Tuple[bool, str]:
    """(whether the kernels run in this process, why or how) for the dispatch `d`."""
    import mlx.core as mx

    from metal_kernels import dispatch

    if d.mode == dispatch.OFF:
        return False, "switched off (MLXMODELS_KERNELS=off)"
    if not d.on_gpu():
        if not mx.metal.is_available():
            return False, NOT_USED
        return False, "MLX's default device is the CPU here; the kernels run only when it is the Metal GPU"
    if d.mode == dispatch.ON:
        return True, "each variant after its self-test, without the speed check (MLXMODELS_KERNELS=on)"
    return True, "each variant after its self-test, and per shape class only where faster than the built-in"


def kernels(quick: bool, emulate: bool, progress: Callable[[str], None]) -> dict:
    """Whether the kernels are used here and why, what earlier runs remembered, and the table of checks when the
    kernels can run (or be emulated)."""
    from app import kernel_table
    from metal_kernels import dispatch

    try:
        d = dispatch.current()
        used, reason = use(d)
        out = {"mode": d.mode, "used": used, "reason": reason}
    except Exception as e:  # noqa: BLE001
        return {"mode": "unknown", "used": False, "reason": f"the dispatch could not start: {kernel_table.one_line(e)}"}
    out["verdicts_file"] = _safe(lambda: str(d.store.path) if d.store.path else "none (no home folder)")
    out["remembered"] = _safe(d.verdicts)  # before this run's checks add theirs: what real use decided
    try:
        out.update(kernel_table.measure(d, quick, emulate, progress))
    except Exception as e:  # noqa: BLE001
        out["error"] = f"the checks could not run: {kernel_table.one_line(e)}"
    return out


# ---------------------------------------------------------------- output


def _gib(n) -> str:
    return f"{n / 2**30:.1f} GiB" if isinstance(n, (int, float)) and not isinstance(n, bool) else str(n)


def format_report(r: dict) -> str:
    from app import kernel_table

    s, k = r["system"], r["kernels"]
    lines = [
        f"os:              {s['os']}",
        f"python:          {s['python']}",
        f"mlx:             {s['mlx']}",
        f"mlxmodels:       {s['mlxmodels']}",
        f"chip:            {s['chip']}",
        f"device:          {s['device']}",
        f"memory:          {_gib(s['memory_bytes'])}"
        + (f", MLX's recommended working set {_gib(s['recommended_working_set_bytes'])}"
           if s["recommended_working_set_bytes"] is not None else ""),
        f"metal:           {'available' if s['metal_available'] is True else 'not available'}",
        f"default device:  {s['default_device']}",
        f"kernels:         MLXMODELS_KERNELS={k['mode']}; " + ("used: " if k["used"] else "not used: ") + k["reason"],
    ]
    if k.get("remembered") or s["metal_available"] is True:  # off a Mac, nothing is ever remembered
        lines += [f"verdicts file:   {k.get('verdicts_file')}"] + _remembered(k.get("remembered"))
    if k.get("backend") == "simulated":
        lines.append("checks:          on a simulated Metal GPU (metal_kernels.testing.simulate_metal)")
    if "emulator" in k:
        lines.append(f"emulator:        {k['emulator']}")
    if k.get("error"):
        lines.append(f"checks:          {k['error']}")
    if k.get("rows"):
        lines += ["", kernel_table.format_rows(k["rows"])]
    return "\n".join(lines)


def _remembered(rows) -> list:
    """Earlier runs' verdicts in one line, and each failed self-test with its reason (what a bug report needs)."""
    if not isinstance(rows, list):
        return [] if rows is None else [f"remembered:      {rows}"]
    failed = [r for r in rows if r["selftest"] == "fail"]
    line = (f"remembered:      {len({r['variant'] for r in rows})} kernel variant(s) from earlier runs, "
            f"{len(failed)} failed, {sum(r['pick'] == 'kernel' for r in rows)} shape class(es) picking the kernel")
    return [line] + [f"  failed: {r['entry']} {r['variant']}: {r['reason']}" for r in failed]


def check_json_path(path: Path) -> None:
    """--json names a new file or a regular one to replace, in a folder that exists; a symlink is refused rather
    than followed (writing through it could replace a file anywhere)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            kind = "symbolic link" if stat.S_ISLNK(mode) else "folder" if stat.S_ISDIR(mode) else "special file"
            raise ValueError(f"--json {path} is a {kind}; give the path of a new or regular file")
    if not path.parent.is_dir():
        raise ValueError(f"--json {path}: the folder {path.parent} does not exist; create it or give another path")


def write_json(path: Path, report: dict) -> None:
    """A temporary file beside `path`, renamed onto it: the report appears whole or not at all."""
    tmp: Optional[str] = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(report, f, indent=2, default=str)
            f.write("\n")
        check_json_path(path)  # again: it may have changed during the checks
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would make it, not mkstemp's 0600
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise OSError(f"--json {path}: cannot write it: {e.strerror or e}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
