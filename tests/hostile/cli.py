"""Run `mlxm` as a user would (a subprocess, so a crash by signal is seen as one) and check how it failed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    seconds: float


def mlxm(args: Sequence[str], env: Optional[dict] = None, timeout: float = 60, stdin: bytes = b"",
         cwd: Optional[Path] = None) -> Run:
    """`mlxm ARGS` with a bounded time; MLXM_DATA_DIR and HF_HUB_OFFLINE are set unless `env` says otherwise."""
    full = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    tic = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], input=stdin, capture_output=True,
                       timeout=timeout, env=full, cwd=cwd or ROOT)
    return Run(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"),
               time.monotonic() - tic)


def assert_refused(run: Run, *needles: str, rc: int = 1, within: float = 30) -> str:
    """The run failed with status `rc` (not a signal), printing exactly one line on stderr, no traceback, that
    names every needle; -> that line."""
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.rc == rc, f"exit {run.rc} (want {rc}); stderr:\n{run.stderr[-2000:]}"
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    assert len(lines) == 1, f"want one line on stderr, got {len(lines)}:\n{run.stderr[-2000:]}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in: {lines[0]}"
    assert run.seconds < within, f"took {run.seconds:.1f} s"
    return lines[0]
