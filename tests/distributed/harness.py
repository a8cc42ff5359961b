"""Run a script on 2 ranks with `mlx.launch --backend ring` on 127.0.0.1 and collect each rank's own result.

mlx.launch exits 0 even when a rank fails, so each rank writes `rank{r}.json` (and any arrays as `rank{r}.npz`)
into the output folder, and a rank that wrote nothing is a failure with its output shown. One TMPDIR is shared by
every launch of a test run: MLX's CPU backend caches compiled kernels there.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED_TMP = Path(tempfile.gettempdir()) / "mlxmodels-distributed-tests"


def free_port_range(n: int) -> int:
    """A starting port with n free ports after it (ring uses start, start+1, ...)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            start = s.getsockname()[1]
        if start + n >= 65535:
            continue
        try:
            socks = []
            for p in range(start, start + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return start
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports on 127.0.0.1")


def launch(args: list, out: Path, n: int = 2, timeout: float = 180, env: dict = None) -> subprocess.CompletedProcess:
    """`mlx.launch --backend ring -n n -- python ARGS...` with OUT in the environment (MLXMODELS_TEST_OUT);
    bounded by `timeout` seconds (the whole process group is killed past it)."""
    out.mkdir(parents=True, exist_ok=True)
    SHARED_TMP.mkdir(exist_ok=True)
    e = {**os.environ, "TMPDIR": str(SHARED_TMP), "MLXMODELS_TEST_OUT": str(out),
         "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **(env or {})}
    cmd = [sys.executable, "-c", "from mlx._distributed_utils.launch import main; main()", "--backend", "ring", "-n", str(n),
           "--starting-port", str(free_port_range(n)), "--", sys.executable, *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        stdout, _ = proc.communicate()
        raise AssertionError(f"ranks did not finish in {timeout} s:\n{stdout[-4000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, "")


def rank_results(out: Path, proc: subprocess.CompletedProcess, n: int = 2) -> list:
    """Each rank's json (with its npz arrays under "arrays"); any rank that wrote none fails with the output."""
    results = []
    for r in range(n):
        path = out / f"rank{r}.json"
        assert path.exists(), f"rank {r} wrote no result:\n{proc.stdout[-4000:]}"
        result = json.loads(path.read_text())
        npz = out / f"rank{r}.npz"
        if npz.exists():
            with np.load(npz) as f:
                result["arrays"] = {k: f[k] for k in f.files}
        results.append(result)
    return results


def write_result(result: dict, arrays: dict = None) -> None:
    """Called by a worker on each rank: its json and arrays, into the folder the harness named."""
    import mlx.core as mx

    out, rank = Path(os.environ["MLXMODELS_TEST_OUT"]), mx.distributed.init().rank()
    if arrays:
        np.savez(out / f"rank{rank}.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    (out / f"rank{rank}.json").write_text(json.dumps(result))
