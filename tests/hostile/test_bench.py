"""`mlxm bench` under signals and with hostile --plot paths (issue 11, items 7 and 8).

Signals: real processes (only a process meets one), each started in a session of its own and signalled at a
moment the test sees rather than guesses (its workers exist; with --compare, both have loaded and the trials run,
one worker always frozen between its turns). After SIGINT, SIGTERM or SIGHUP: the shell's status (130, 143, 129),
one line naming the signal, every worker process gone (checked by pid) and no mlxm-bench-* folder in TMPDIR. After
kill -9, which no cleanup can follow, no worker is left frozen for good.

--plot: a FIFO, a folder, a symbolic link or a missing folder is refused in one line before any work, nothing
written or read through it; a regular file is replaced whole (a temporary file renamed onto it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import bench_cmd, cli, signals
from tests.app.tiny import build_tiny
from tests.hostile.cli import ROOT, Run, mlxm, assert_refused

RUN = ["-p", "32", "-g", "16", "-n", "100000"]  # trials of a few ms each, far more than any test waits for
BOUND = 60  # seconds anything here may take: loading the workers, a cleanup


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def tmpdir_env(tmp_path):
    """A TMPDIR of this test's own, where the workers' log folder must not stay."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    return folder


def start(tiny, tmpdir_env, *args) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmpdir_env)}
    return subprocess.Popen([sys.executable, "-m", "app.cli", "bench", "-m", str(tiny), *RUN, *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=hangup_as_in_a_terminal)


def hangup_as_in_a_terminal():
    """bench started from a terminal: SIGHUP at its default, even when the tests run under nohup (which ignores it,
    and bench rightly keeps an ignored SIGHUP ignored)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def children(pid: int) -> list:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=BOUND).stdout
    return [int(p) for p in out.split()]


def frozen(pid: int) -> bool:
    """Stopped by SIGSTOP (ps shows T)."""
    out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True, timeout=BOUND)
    return out.stdout.strip().startswith("T")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(test, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        got = test()
        if got:
            return got
        assert proc.poll() is None, f"bench ended (status {proc.returncode}) before {what}: {proc.stderr.read()}"
        time.sleep(0.02)
    raise AssertionError(f"not within {BOUND} s: {what}")


def trials_running(proc: subprocess.Popen) -> list:
    """-> the two workers' pids once both have loaded: each is frozen after loading, so both seen frozen."""
    seen = set()

    def both_frozen():
        kids = children(proc.pid)
        seen.update(k for k in kids if frozen(k))
        return kids if len(kids) == 2 and seen >= set(kids) else None

    return wait_until(both_frozen, "both workers loaded", proc)


def finish(proc: subprocess.Popen) -> Run:
    try:
        out, err = proc.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"bench still running {BOUND} s after the signal") from None
    return Run(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), 0)


def end(workers: list) -> None:
    """Whatever a test found, it leaves no process behind."""
    for w in workers:
        if alive(w):
            os.kill(w, signal.SIGKILL)


def assert_cleaned_up(proc: subprocess.Popen, workers: list, tmpdir_env: Path, sig: signal.Signals):
    run = finish(proc)
    try:
        line = assert_refused(run, f"mlxm: interrupted by {sig.name}: the benchmark stopped", rc=128 + sig)
        assert "worker processes were ended" in line
        assert run.stdout == ""
        # bench waits for its workers before it exits: they are gone by now, not soon
        assert not [w for w in workers if alive(w)], "a worker outlived bench"
        assert not list(tmpdir_env.glob("mlxm-bench-*")), "bench left its log folder"
    finally:
        end(workers)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_mid_trials(tiny, tmpdir_env, sig):
    """A kill or a closed terminal while the trials run: one worker mid-trial, the other frozen (SIGSTOP)."""
    proc = start(tiny, tmpdir_env, "--compare", "mlx-lm")
    workers = trials_running(proc)
    proc.send_signal(sig)
    assert_cleaned_up(proc, workers, tmpdir_env, sig)


def test_ctrl_c_while_the_worker_loads(tiny, tmpdir_env):
    """Ctrl-C the moment the worker exists (starting, loading): it is stopped, not left to finish its load."""
    proc = start(tiny, tmpdir_env)
    workers = wait_until(lambda: children(proc.pid), "a worker started", proc)
    proc.send_signal(signal.SIGINT)
    assert_cleaned_up(proc, workers, tmpdir_env, signal.SIGINT)


def test_kill_9_leaves_no_worker_frozen(tiny, tmpdir_env):
    """No cleanup follows SIGKILL, but no worker stays behind: the frozen one is in a process group of its own,
    which bench's death orphans, and the kernel ends an orphaned group's stopped processes (SIGHUP); the running
    one ends when it next writes to bench."""
    proc = start(tiny, tmpdir_env, "--compare", "mlx-lm")
    workers = trials_running(proc)
    proc.kill()
    finish(proc)
    try:
        deadline = time.monotonic() + BOUND
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [w for w in workers if alive(w)], "a worker outlived bench's kill -9"
    finally:
        end(workers)


def test_held_signals_arrive_when_the_block_ends():
    """What is made inside signals.held() (a folder, a worker) is recorded before the signal's cleanup runs."""
    saved = signals.catch()
    made = []
    try:
        with pytest.raises(signals.Interrupted) as e:
            with signals.held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                made.append("folder")
        assert made == ["folder"] and signals.exit_status(e.value) == 143
    finally:
        signals.restore(saved)


def test_a_signal_ignored_at_start_stays_ignored():
    """Under nohup (SIGHUP ignored) a closed terminal must not stop a run; the other signals are caught."""
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    term = signal.getsignal(signal.SIGTERM)
    try:
        saved = signals.catch()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is not term
        signals.restore(saved)
        assert signal.getsignal(signal.SIGTERM) is term
    finally:
        signal.signal(signal.SIGHUP, before)


# ---------------------------------------------------------------- --plot


def test_plot_into_a_fifo_is_refused_without_blocking(tiny, tmp_path):
    """Opening a FIFO for writing blocks until a reader comes: bench never opens it."""
    fifo = tmp_path / "p.png"
    os.mkfifo(fifo)
    run = mlxm(["bench", "-m", tiny, "-p", "16", "-g", "4", "-n", "1", "--plot", fifo], timeout=BOUND)
    assert_refused(run, f"--plot {fifo} is a FIFO, not a regular file", within=BOUND)
    assert fifo.is_fifo() and sorted(tmp_path.iterdir()) == [fifo]


@pytest.mark.parametrize("case", ["symlink", "folder", "missing folder", "file as folder"])
def test_plot_paths_refused_before_any_work(capsys, monkeypatch, tmp_path, case):
    """Refused in one line naming the path, before a worker starts; a link's target is neither read nor written."""
    precious = tmp_path / "precious.txt"
    precious.write_text("precious")
    target = tmp_path / "x.png"
    if case == "symlink":
        target.symlink_to(precious)
        needle = f"--plot {target} is a symbolic link"
    elif case == "folder":
        target.mkdir()
        needle = f"--plot {target} is a folder, not a regular file"
    elif case == "missing folder":
        target = tmp_path / "nodir" / "x.png"
        needle = f"the folder {tmp_path / 'nodir'} does not exist"
    else:
        target = precious / "x.png"
        needle = f"the folder {precious} does not exist"
    monkeypatch.setattr(bench_cmd, "measure", lambda *a, **k: pytest.fail("the benchmark ran"))
    assert cli.main(["bench", "--plot", str(target)]) == 1  # the built-in model: the check comes first anyway
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert precious.read_text() == "precious"
    if case == "symlink":
        assert target.is_symlink() and os.readlink(target) == str(precious)
    assert not list(tmp_path.glob(".x.png.*"))


def test_plot_replaces_a_regular_file_whole(tmp_path):
    """The old file is replaced by a rename (a new inode, never rewritten in place), with an ordinary mode."""
    target = tmp_path / "x.png"
    target.write_bytes(b"old plot")
    old = target.stat().st_ino
    bench_cmd._write_plot(target, b"new plot")
    umask = os.umask(0)
    os.umask(umask)
    assert target.read_bytes() == b"new plot" and target.stat().st_ino != old
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(tmp_path.iterdir()) == [target]


def test_plot_path_changed_during_the_run(tmp_path):
    """A link put at the path while bench ran is refused at write time too, and no temporary file stays."""
    precious = tmp_path / "precious.txt"
    precious.write_text("precious")
    target = tmp_path / "x.png"
    bench_cmd._check_plot_path(target)  # at the start: absent, fine
    target.symlink_to(precious)
    with pytest.raises(ValueError, match="is a symbolic link"):
        bench_cmd._write_plot(target, b"plot")
    assert precious.read_text() == "precious" and target.is_symlink()
    assert sorted(tmp_path.iterdir()) == [precious, target]


def test_plot_write_failure_names_the_plot(monkeypatch, tmp_path):
    """A full disk at the rename: one error naming --plot's path (not the temporary file), which is removed."""
    target = tmp_path / "x.png"

    def full(src, dst):
        raise OSError(28, "No space left on device", str(src))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match=f"--plot {target}: cannot write it: No space left on device"):
        bench_cmd._write_plot(target, b"plot")
    assert list(tmp_path.iterdir()) == []
