"""Issue 11, item 5: convert never deletes what it did not create.

Real processes where only a process meets the fault (Ctrl-C, SIGTERM, kill -9, a file size limit, a disk that fills
up, a rival run); in-process calls for the rest (flags, what dead runs left, folders that appear mid-run). After
each fault: no OUT, nothing left that could be taken for a model, the source untouched, and the next run on the
same OUT succeeds. Exit status: 1 for a fault, 128 + the signal for a signal (130 Ctrl-C, 143 SIGTERM)."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import pytest

from app.cli import main
from mlxmodels.formats.safetensors import ShardWriter, save_file
from tests.hostile.cli import ROOT, Run, refused
from tests.oracle import build_tiny_llama

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}


def big_random_llama(folder: Path, hidden=768, layers=8, vocab=32000) -> Path:
    """A bfloat16 Llama of ~190 MB (its conversion writes for a few tenths of a second: long enough to be stopped
    mid-write; the tests stop it with SIGSTOP before acting, so timing never decides what they see)."""
    folder.mkdir()
    cfg = dict(model_type="llama", hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
               num_attention_heads=8, num_key_value_heads=8, vocab_size=vocab, max_position_embeddings=256,
               torch_dtype="bfloat16", tie_word_embeddings=False)
    (folder / "config.json").write_text(json.dumps(cfg))
    mx.random.seed(0)

    def rand(*shape):
        return (0.02 * mx.random.normal(shape)).astype(mx.bfloat16)

    w = {"model.embed_tokens.weight": rand(vocab, hidden), "lm_head.weight": rand(vocab, hidden),
         "model.norm.weight": rand(hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            w[p + f"self_attn.{n}.weight"] = rand(hidden, hidden)
        w[p + "mlp.gate_proj.weight"] = rand(2 * hidden, hidden)
        w[p + "mlp.up_proj.weight"] = rand(2 * hidden, hidden)
        w[p + "mlp.down_proj.weight"] = rand(hidden, 2 * hidden)
        w[p + "input_layernorm.weight"] = rand(hidden)
        w[p + "post_attention_layernorm.weight"] = rand(hidden)
    save_file(folder / "model.safetensors", w)
    return folder


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    return big_random_llama(tmp_path_factory.mktemp("big") / "src")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "src")


def fingerprint(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def here(capsys, *args) -> Run:
    """`mlxm convert ARGS` in this process (where no signal or crash can happen: quicker than a subprocess)."""
    tic = time.monotonic()
    try:
        code = main(["convert", *map(str, args)])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return Run(code, out, err, time.monotonic() - tic)


def succeeds(capsys, src, out, *args):
    """The next run on OUT works, and leaves OUT alone beside it: every leftover was swept."""
    run = here(capsys, src, out, *args)
    assert run.rc == 0 and run.stderr == "", run.stderr
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def not_a_model(parent: Path):
    """What a killed run left is hidden and has no config.json: nothing takes it for a model."""
    for p in parent.rglob("*"):
        assert p.name != "config.json", f"{p} could pass for a model"
    assert all(p.name.startswith(".out.mlxm-") for p in parent.iterdir())


# ------------------------------------------------------------------------------------------ real processes


def start(src, out, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "app.cli", "convert", str(src), str(out), *args], cwd=ROOT,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def stop_when(proc: subprocess.Popen, ready, timeout=60.0):
    """Poll until `ready()`, then freeze the process (SIGSTOP): what the test does next happens at a known point."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "the conversion never reached the point the test waits for"
        time.sleep(0.001)
    proc.send_signal(signal.SIGSTOP)


def writing(parent: Path):
    """The run has started writing weights into its work folder."""
    return lambda: any(parent.glob(".out.mlxm-partial-*/*.safetensors"))


def finish(proc: subprocess.Popen, tic: float) -> Run:
    out, err = proc.communicate(timeout=60)
    return Run(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - tic)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_signal_mid_write(capsys, big, tmp_path, sig):
    before, out = fingerprint(big), tmp_path / "out"
    tic = time.monotonic()
    proc = start(big, out, "-q", "--bits", "8")
    stop_when(proc, writing(tmp_path))
    assert not out.exists()  # stopped mid-write, not after
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    run = finish(proc, tic)
    if sig == signal.SIGKILL:  # no cleanup is possible: the claim and the work folder stay, and are never a model
        assert run.rc == -signal.SIGKILL and run.stderr == ""
        assert not out.exists()
        not_a_model(tmp_path)
    else:
        refused(run, f"interrupted by {sig.name}", "partial output was removed", rc=SIGNAL_EXIT[sig])
        assert list(tmp_path.iterdir()) == []
    assert fingerprint(big) == before
    succeeds(capsys, big, out, "-q", "--bits", "8")


def test_file_size_limit_mid_write(capsys, big, tmp_path):
    """RLIMIT_FSIZE (SIGXFSZ ignored, so the write fails with EFBIG as a full disk fails with ENOSPC)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    before, out = fingerprint(big), tmp_path / "out"
    run = finish(start(big, out, "-q", "--bits", "8", preexec_fn=limit), time.monotonic())
    refused(run, f"could not write out in {tmp_path}", "File too large", "free some space")
    assert list(tmp_path.iterdir()) == [] and fingerprint(big) == before
    succeeds(capsys, big, out, "-q", "--bits", "8")


@pytest.fixture
def small_disk(tmp_path):
    """A 192 MB tmpfs: room for the output (the space check passes), and room for a test to fill it meanwhile."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (the file size limit test covers a full disk without it)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_disk_fills_up_mid_write(capsys, big, small_disk):
    before, out = fingerprint(big), small_disk / "out"
    tic = time.monotonic()
    proc = start(big, out, "-q", "--bits", "8")
    stop_when(proc, writing(small_disk))
    filler = small_disk / "someone-else.bin"
    with open(filler, "wb", buffering=0) as f:  # someone else takes every byte left
        try:
            while f.write(bytes(1 << 20)):
                pass
        except OSError:
            pass
    proc.send_signal(signal.SIGCONT)
    refused(finish(proc, tic), "No space left on device", "free some space")
    assert sorted(p.name for p in small_disk.iterdir()) == [filler.name] and fingerprint(big) == before
    filler.unlink()
    succeeds(capsys, big, out, "-q", "--bits", "8")


def test_second_convert_to_the_same_out_fails_at_once(capsys, big, tiny, tmp_path):
    out = tmp_path / "out"
    tic = time.monotonic()
    first = start(big, out, "-q", "--bits", "8")
    stop_when(first, lambda: (tmp_path / ".out.mlxm-claim").is_dir())  # claimed, and held while frozen
    for force in ([], ["--force"]):
        refused(here(capsys, tiny, out, *force), f"{out} is being written by another convert (pid {first.pid}",
                within=5)
    first.send_signal(signal.SIGCONT)
    run = finish(first, tic)
    assert run.rc == 0 and run.stderr == "", run.stderr  # the second run touched nothing of the first's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "config.json").is_file()


# ------------------------------------------------------------------------------------------ what dead runs leave


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    return p.pid


def leave(parent: Path, kind: str, owner: dict = None, files=("model.safetensors", "config.json")) -> Path:
    """A folder as a run of `convert` leaves it beside OUT (named as claim.py names them)."""
    folder = parent / (".out.mlxm-claim" if kind == "claim" else f".out.mlxm-{kind}-{os.urandom(6).hex()}")
    folder.mkdir()
    if owner is not None:
        (folder / "owner.json").write_text(json.dumps(owner) if isinstance(owner, dict) else owner)
    for name in files:
        (folder / name).write_text("{}")
    return folder


def test_what_dead_runs_left_is_swept_and_nothing_else(capsys, tiny, tmp_path):
    dead = dict(pid=dead_pid(), host=socket.gethostname(), token="0" * 12, started=0)
    leave(tmp_path, "claim", dead, files=())
    for kind in ("partial", "new", "trash"):
        leave(tmp_path, kind, dead)
    theirs = [tmp_path / ".out.backup", tmp_path / ".out.mlxm-partial-mine", tmp_path / ".other.mlxm-partial-0a"]
    for p in theirs:
        p.mkdir()
    run = here(capsys, tiny, tmp_path / "out")
    assert run.rc == 0, run.stderr
    assert sorted(tmp_path.iterdir()) == sorted([tmp_path / "out", *theirs])  # never a folder it did not name


@pytest.mark.parametrize("owner,words", [
    (dict(pid=1, host="another-machine", token="0" * 12, started=0), "pid 1 on another-machine"),
    (dict(pid=os.getpid(), host=socket.gethostname(), token="0" * 12, started=0), f"pid {os.getpid()} on"),
    ("{not json", "not a claim this program can read"),
], ids=["other-host", "live", "unreadable"])
def test_a_claim_that_may_be_alive_is_never_removed(capsys, tiny, tmp_path, owner, words):
    claim = leave(tmp_path, "claim", owner, files=())
    refused(here(capsys, tiny, tmp_path / "out"), words, "remove", within=5)
    assert sorted(tmp_path.iterdir()) == [claim] and (claim / "owner.json").is_file()


def test_a_model_set_aside_by_a_killed_force_run_comes_back(capsys, tiny, tmp_path):
    """Killed between moving the old OUT aside and moving the new one in: the next run puts the old one back."""
    out = tmp_path / "out"
    assert here(capsys, tiny, out).rc == 0
    before = fingerprint(out)
    dead = dict(pid=dead_pid(), host=socket.gethostname(), token="0" * 12, started=0)
    leave(tmp_path, "claim", dead, files=())
    leave(tmp_path, "partial", dead)
    os.rename(out, tmp_path / ".out.mlxm-old-00000000000a")
    refused(here(capsys, tiny, out), f"{out} already exists; pass --force")
    assert fingerprint(out) == before and sorted(tmp_path.iterdir()) == [out]


def test_an_interrupt_between_the_renames_of_force_puts_the_old_out_back(capsys, monkeypatch, tiny, tmp_path):
    out = tmp_path / "out"
    assert here(capsys, tiny, out).rc == 0
    before, rename = fingerprint(out), os.rename

    def interrupted(src, dst, **kw):  # Ctrl-C just after the old OUT was set aside
        if Path(src).name.startswith(".out.mlxm-partial-") and Path(dst) == out:
            raise KeyboardInterrupt
        return rename(src, dst, **kw)

    monkeypatch.setattr(os, "rename", interrupted)
    refused(here(capsys, tiny, out, "--force", "-q"), "interrupted by SIGINT", rc=130)
    assert fingerprint(out) == before and sorted(tmp_path.iterdir()) == [out]


# ------------------------------------------------------------------------------------------ someone acts mid-run


def meanwhile(monkeypatch, action):
    """Run `action` while the conversion writes its weights (after the claim, before the rename into OUT)."""
    real = ShardWriter.finish

    def finish(self, **kw):
        action()
        return real(self, **kw)

    monkeypatch.setattr(ShardWriter, "finish", finish)


def folder_with(path: Path, *names):
    path.mkdir()
    for n in names:
        (path / n).write_text("mine")


@pytest.mark.parametrize("case", ["created", "created-force", "empty-created", "claim-removed", "claim-taken"])
def test_someone_acts_mid_run(capsys, monkeypatch, tiny, tmp_path, case):
    out, claim = tmp_path / "out", tmp_path / ".out.mlxm-claim"
    if case.startswith("claim"):
        def action():
            if case == "claim-removed":
                shutil.rmtree(claim)
            else:
                (claim / "owner.json").write_text(json.dumps(dict(pid=os.getpid(), host="x", token="1" * 12)))
        words, kept = "no longer holds this run's claim", [claim] if case == "claim-taken" else []
    else:
        def action():
            folder_with(out, *([] if case == "empty-created" else ["notes.txt"]))
        words = "is not a model folder" if case == "created-force" else "was created by someone else"
        kept = [out]
    meanwhile(monkeypatch, action)
    refused(here(capsys, tiny, out, *(["--force"] if case == "created-force" else [])), str(out), words)
    assert sorted(tmp_path.iterdir()) == kept  # the work folder and this run's claim are gone, theirs stay
    if out in kept and case != "empty-created":
        assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("case", ["file", "symlink", "not-a-model", "dot", "dotdot"])
def test_force_replaces_only_a_model_folder(capsys, tiny, tmp_path, case):
    target = tmp_path / "out"
    if case == "file":
        target.write_text("mine")
    elif case == "symlink":
        succeeds(capsys, tiny, tmp_path / "model")
        target.symlink_to(tmp_path / "model")
    elif case == "not-a-model":
        folder_with(target, "config.json", "thesis.tex")  # config.json but no weights: someone's project
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    given = {"dot": ".", "dotdot": f"{tmp_path}/sub/.."}.get(case, target)  # Path() would drop a trailing "."
    words = {"file": "is not a folder", "symlink": "is a symbolic link", "not-a-model": "is not a model folder",
             "dot": "does not name a new folder", "dotdot": "does not name a new folder"}[case]
    refused(here(capsys, tiny, given, "--force"), words, "OUT")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_force_replaces_an_empty_folder(capsys, tiny, tmp_path):
    (tmp_path / "out").mkdir()
    succeeds(capsys, tiny, tmp_path / "out", "--force")


# ------------------------------------------------------------------------------------------ flags


@pytest.mark.parametrize("args,words", [
    (["--shard-size", "inf"], "argument --shard-size: invalid value 'inf'"),
    (["--shard-size", "nan"], "argument --shard-size: invalid value 'nan'"),
    (["--shard-size", "0"], "argument --shard-size: invalid value '0'"),
    (["--shard-size", "-1"], "argument --shard-size: invalid value '-1'"),
    (["--shard-size", "1e-12"], "argument --shard-size: invalid value '1e-12'"),  # under one byte
    (["--shard-size", "five"], "argument --shard-size: invalid value 'five'"),
    (["--report-context", "0"], "argument --report-context: invalid value '0'"),
    (["--report-context", "1"], "argument --report-context: invalid value '1'"),
    (["--report-tokens", "0"], "argument --report-tokens: invalid value '0'"),
    (["--report-tokens", "-3"], "argument --report-tokens: invalid value '-3'"),
    (["--bits", "-4"], "argument --bits: invalid choice"),
    (["--group-size", "-64"], "argument --group-size: invalid choice"),
    (["--report", "{tmp}"], "is a folder, not a regular file"),
    (["--report", "{tmp}/fifo"], "is a FIFO, not a regular file"),  # reading it would block forever
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_numbers_and_files_are_refused_before_any_work(capsys, tiny, tmp_path, args, words):
    os.mkfifo(tmp_path / "fifo")
    out = tmp_path / "new" / "out"
    args = [a.format(tmp=tmp_path) for a in args]
    refused(here(capsys, tiny, out, *args), words, rc=2 if "argument" in words else 1, within=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]  # not even OUT's parent was made


def test_an_out_name_at_the_length_limit(capsys, tiny, tmp_path):
    succeeds(capsys, tiny, tmp_path / ("m" * 255))  # the names beside it are shortened to fit


def test_a_place_it_cannot_write(capsys, monkeypatch, tiny, tmp_path):
    def mkdir(path, *args, **kw):  # as a read-only disk or a folder of someone else's answers (root ignores modes)
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "mkdir", mkdir)
    refused(here(capsys, tiny, tmp_path / "out"), f"cannot write in {tmp_path} (Permission denied)")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_run_removes_the_parents_it_made(capsys, tmp_path):
    src = tmp_path / "src"
    src.mkdir()  # a folder without config.json: the run fails after claiming OUT
    refused(here(capsys, src, tmp_path / "a" / "b" / "out"), "config.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
