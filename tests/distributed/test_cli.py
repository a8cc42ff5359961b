"""`mlxm generate --parallel` on 2 ranks (mlx.launch, ring, 127.0.0.1): rank 0 prints the single-process output
once, both ranks generate the same tokens, and the errors (ranks on different models, a share that does not fit,
a lost rank) are one line on rank 0 with every rank stopped within a bounded time."""

import os
import signal
import sys
from pathlib import Path

import pytest

from app import cli
from tests.app.tiny import build_tiny
from tests.distributed.harness import launch, rank_results

WORKER = Path(__file__).with_name("cli_worker.py")
PROMPT = ["--raw", "-p", "The ranks agree", "--max-tokens", "32"]
TIMEOUT = 120  # per launch; a lost rank must be noticed well within it


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny"))


def run(tmp_path, folder, *extra, mode="tensor", env=None, timeout=TIMEOUT):
    args = [WORKER, "generate", "-m", folder, *PROMPT, "--parallel", mode, *extra]
    return launch(args, tmp_path / "out", timeout=timeout, env=env)


def errors(proc) -> list:
    """The error lines in the launch's output (one may follow the generated text on its line: stdout and stderr
    are merged, and a reply cut short ends mid-line)."""
    return [line[line.index("mlxm: error:"):] for line in proc.stdout.splitlines() if "mlxm: error:" in line]


def test_rank_0_prints_the_single_process_output_once(tmp_path, folder, capsys):
    assert cli.main(["generate", "-m", str(folder), *PROMPT]) == 0
    single = capsys.readouterr().out
    assert len(single) > 16
    proc = run(tmp_path, folder, mode="auto")
    r0, r1 = rank_results(tmp_path / "out", proc)
    assert r0["rc"] == r1["rc"] == 0, proc.stdout
    assert r0["tokens"] == r1["tokens"] and len(r0["tokens"]) == 32
    assert proc.stdout.count(single) == 1, proc.stdout
    said = [line for line in proc.stdout.splitlines() if "--parallel auto chose" in line]
    assert len(said) == 1 and said[0].startswith(  # 4 heads divide over 2 ranks; no experts
        "mlxm: --parallel auto chose tensor (4 attention heads over 2 ranks; the model's "), said


def test_ranks_on_different_models_stop_with_one_line(tmp_path, folder):
    other = build_tiny(tmp_path / "other", rms_norm_eps=1e-6)
    proc = run(tmp_path, folder, env={"MLXM_TEST_RANK1_MODEL": str(other)})
    r0, r1 = rank_results(tmp_path / "out", proc)
    assert r0["rc"] == r1["rc"] == 1
    [line] = errors(proc)
    assert line.startswith("mlxm: error: rank 1 loaded a different model than rank 0"), line


def test_a_rank_without_room_for_its_share_stops_every_rank(tmp_path, folder):
    proc = run(tmp_path, folder, env={"MLXM_TEST_RANK1_MEMORY": "1KB"})
    r0, r1 = rank_results(tmp_path / "out", proc)
    assert r0["rc"] == r1["rc"] == 1
    [line] = errors(proc)
    assert line.startswith("mlxm: error: rank 1 needs ") and "may hold 1.00 KB" in line, line


def test_a_lost_rank_stops_the_others_within_the_timeout(tmp_path, folder):
    """Rank 1 stops (alive, its sockets open, silent) at its 4th token and is killed 8 s later; rank 0 must
    leave through its watchdog after 3 s, not through the ring's error when rank 1's sockets finally close."""
    out = tmp_path / "out"
    try:
        proc = run(tmp_path, folder, "--parallel-timeout", "3", env={"MLXM_TEST_STOP_RANK1": "4"}, timeout=90)
    finally:
        kill_ranks_of(out)
    [line] = errors(proc)
    assert line.startswith("mlxm: error: no word from the other ranks for 3 s"), line
    assert not (out / "rank0.json").exists() and not (out / "rank1.json").exists()


@pytest.mark.parametrize("flags, message", [
    (["--parallel", "rows"], "argument --parallel: invalid choice: 'rows'"),
    (["--parallel", "auto", "--parallel-timeout", "0"], "argument --parallel-timeout: invalid value '0'"),
])
def test_bad_parallel_flags_are_one_line_and_exit_2(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "-p", "hi", *flags])
    assert e.value.code == 2 and capsys.readouterr().err.startswith(f"mlxm generate: error: {message}")


def test_a_prompt_cache_cannot_be_split(tmp_path, folder, capsys):
    assert cli.main(["generate", "-m", str(folder), "-p", "hi", "--parallel", "tensor", "--prompt-cache",
                     str(tmp_path / "c.safetensors")]) == 1
    assert capsys.readouterr().err == ("mlxm: error: --prompt-cache holds one process's whole cache, which --parallel "
                                       "cannot split; drop one\n")


def test_a_follower_leaves_the_ranks_common_errors_to_rank_0(monkeypatch):
    from app import parallel
    from mlxmodels.distributed import ParallelError

    line = "mlxm: error: it went wrong"
    assert parallel.error_line(line, ParallelError("x")) == line  # rank 0
    monkeypatch.setattr(parallel, "_follower", (3, None))
    assert parallel.error_line(line, ParallelError("x")) is None
    assert parallel.error_line(line, FileNotFoundError("x")) == "mlxm: error: rank 3: it went wrong"
    assert parallel.lost_rank(RuntimeError("[ring] connection to a peer was lost")).startswith(
        "mlxm: error: rank 3: another rank went away mid-run ([ring] connection to a peer was lost)")
    assert parallel.lost_rank(RuntimeError("out of memory")) is None


def kill_ranks_of(out: Path) -> list:
    """Kill what is left of this launch's ranks, should the worker's own timer have failed (a stopped rank outlives
    mlx.launch's SIGTERM), found by the output folder the harness put in their environment."""
    mark = f"MLXMODELS_TEST_OUT={out}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if mark in env and int(pid) != os.getpid():
            found.append(int(pid))
            os.kill(int(pid), signal.SIGKILL)
    return found


if sys.platform != "linux":  # the lost-rank test finds its ranks through /proc
    del test_a_lost_rank_stops_the_others_within_the_timeout
