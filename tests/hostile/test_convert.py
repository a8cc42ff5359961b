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
from mlxmodels.formats.safetensors import INDEX, ShardWriter, save_file
from quantize.convert import Converter
from quantize.report import read_text
from tests.hostile.cli import ROOT, Run, assert_refused
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
    """Every path under `folder` (links not followed) with its size and time: what a run must leave as it was."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


def here(capsys, *args) -> Run:
    """`mlxm convert ARGS` in this process (where no signal or crash can happen: quicker than a subprocess)."""
    tic = time.monotonic()
    try:
        code = main(["convert", *map(str, args)])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return Run(code, out, err, time.monotonic() - tic)


def assert_succeeds(capsys, src, out, *args):
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
        assert_refused(run, f"interrupted by {sig.name}", "partial output was removed", rc=SIGNAL_EXIT[sig])
        assert list(tmp_path.iterdir()) == []
    assert fingerprint(big) == before
    assert_succeeds(capsys, big, out, "-q", "--bits", "8")


def test_file_size_limit_mid_write(capsys, big, tmp_path):
    """RLIMIT_FSIZE (SIGXFSZ ignored, so the write fails with EFBIG as a full disk fails with ENOSPC)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    before, out = fingerprint(big), tmp_path / "out"
    run = finish(start(big, out, "-q", "--bits", "8", preexec_fn=limit), time.monotonic())
    assert_refused(run, f"could not write out in {tmp_path}", "File too large", "free some space")
    assert list(tmp_path.iterdir()) == [] and fingerprint(big) == before
    assert_succeeds(capsys, big, out, "-q", "--bits", "8")


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
    assert_refused(finish(proc, tic), "No space left on device", "free some space")
    assert sorted(p.name for p in small_disk.iterdir()) == [filler.name] and fingerprint(big) == before
    filler.unlink()
    assert_succeeds(capsys, big, out, "-q", "--bits", "8")


def test_second_convert_to_the_same_out_fails_at_once(capsys, big, tiny, tmp_path):
    out = tmp_path / "out"
    tic = time.monotonic()
    first = start(big, out, "-q", "--bits", "8")
    stop_when(first, lambda: (tmp_path / ".out.mlxm-claim").is_dir())  # claimed, and held while frozen
    for force in ([], ["--force"]):
        assert_refused(here(capsys, tiny, out, *force), f"{out} is being written by another convert (pid {first.pid}",
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
    assert_refused(here(capsys, tiny, tmp_path / "out"), words, "remove", within=5)
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
    assert_refused(here(capsys, tiny, out), f"{out} already exists; pass --force")
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
    assert_refused(here(capsys, tiny, out, "--force", "-q"), "interrupted by SIGINT", rc=130)
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
    assert_refused(here(capsys, tiny, out, *(["--force"] if case == "created-force" else [])), str(out), words)
    assert sorted(tmp_path.iterdir()) == kept  # the work folder and this run's claim are gone, theirs stay
    if out in kept and case != "empty-created":
        assert (out / "notes.txt").read_text() == "mine"


def test_a_file_saved_into_out_as_force_sets_it_aside_stops_the_run(capsys, monkeypatch, tiny, tmp_path):
    """After the last check_out and before the old OUT is moved aside, the user saves a note into it: the set-aside
    folder is checked again, and put back with the note, never removed."""
    out = tmp_path / "out"
    assert_succeeds(capsys, tiny, out)
    before, rename = fingerprint(out), os.rename

    def late(src, dst, **kw):
        if Path(src) == out and Path(dst).name.startswith(".out.mlxm-old-"):
            (out / "notes.txt").write_text("mine")
        return rename(src, dst, **kw)

    monkeypatch.setattr(os, "rename", late)
    assert_refused(here(capsys, tiny, out, "--force", "-q"), f"{out} holds notes.txt, which convert does not write")
    assert (out / "notes.txt").read_text() == "mine" and sorted(tmp_path.iterdir()) == [out]
    assert {k: v for k, v in fingerprint(out).items() if k != "notes.txt"} == before  # the old model, as it was


@pytest.mark.parametrize("theirs,named", [
    (["notes.txt"], "notes.txt"),
    (["adapters/adapter.safetensors"], "adapters/"),  # a LoRA adapter kept beside the model it was trained on
    (["notes.txt", "README.md"], "README.md (and 1 more)"),
    (["tokenizer.json@"], "tokenizer.json"),  # a link (to a file of theirs) where convert writes a file
], ids=["note", "folder", "two", "link"])
def test_force_never_removes_what_convert_did_not_write(capsys, tiny, tmp_path, theirs, named):
    out = tmp_path / "out"
    assert_succeeds(capsys, tiny, out)
    for name in theirs:
        path = out / name.rstrip("@")
        if name.endswith("@"):
            (tmp_path / "theirs.json").write_text("mine")
            path.unlink()
            path.symlink_to(tmp_path / "theirs.json")
        else:
            path.parent.mkdir(exist_ok=True)
            path.write_text("mine")
    before = fingerprint(tmp_path)
    assert_refused(here(capsys, tiny, out, "--force", "-q"), f"{out} holds {named}, which convert does not write",
            "move it out of that folder or choose another OUT", within=5)
    assert fingerprint(tmp_path) == before


def test_force_replaces_a_folder_of_only_what_convert_writes(capsys, tiny, tmp_path):
    """Every name convert writes, from any source (other shard counts, other tokenizers' files), is replaced."""
    out = tmp_path / "out"
    folder_with(out, "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
                "qwen.tiktoken", "chat_template.jinja", "chat_template.json", "generation_config.json", ".DS_Store")
    assert_succeeds(capsys, tiny, out, "--force")
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in tiny.iterdir()] + [INDEX])


@pytest.mark.parametrize("src,out", [
    ("src", "src/mlx"),
    ("src", "src/a/b/mlx"),  # and its parents are not made
    ("src", "link/mlx"),  # through a link to the source
    ("link", "src/mlx"),  # the source through a link
], ids=["child", "grandchild", "link-out", "link-src"])
def test_an_out_inside_the_source_is_refused_before_any_work(capsys, tiny, tmp_path, src, out):
    shutil.copytree(tiny, tmp_path / "src")
    (tmp_path / "link").symlink_to(tmp_path / "src")
    before = fingerprint(tmp_path)
    assert_refused(here(capsys, tmp_path / src, tmp_path / out), f"{tmp_path / out} is inside the source folder "
            f"{tmp_path / src}; choose an OUT outside it", within=5)
    assert fingerprint(tmp_path) == before


def test_an_out_beside_the_source_whose_name_extends_it_is_not_inside(capsys, tiny, tmp_path):
    shutil.copytree(tiny, tmp_path / "src")
    run = here(capsys, tmp_path / "src", tmp_path / "src-mlx")
    assert run.rc == 0 and run.stderr == "", run.stderr


@pytest.mark.parametrize("case", ["file", "symlink", "not-a-model", "dot", "dotdot"])
def test_force_replaces_only_a_model_folder(capsys, tiny, tmp_path, case):
    target = tmp_path / "out"
    if case == "file":
        target.write_text("mine")
    elif case == "symlink":
        assert_succeeds(capsys, tiny, tmp_path / "model")
        target.symlink_to(tmp_path / "model")
    elif case == "not-a-model":
        folder_with(target, "config.json", "thesis.tex")  # config.json but no weights: someone's project
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    given = {"dot": ".", "dotdot": f"{tmp_path}/sub/.."}.get(case, target)  # Path() would drop a trailing "."
    words = {"file": "is not a folder", "symlink": "is a symbolic link", "not-a-model": "is not a model folder",
             "dot": "does not name a new folder", "dotdot": "does not name a new folder"}[case]
    assert_refused(here(capsys, tiny, given, "--force"), words, "OUT")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_force_replaces_an_empty_folder(capsys, tiny, tmp_path):
    (tmp_path / "out").mkdir()
    assert_succeeds(capsys, tiny, tmp_path / "out", "--force")


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
    (["--report-tokens", str(10 ** 30)], f"argument --report-tokens: invalid value '{10 ** 30}' (expected a whole "
                                         "number from 1 to 1048576)"),  # was an OverflowError from the read
    (["--report-tokens", "1048577"], "argument --report-tokens: invalid value '1048577'"),
    (["--report-context", str(10 ** 30)], "argument --report-context: invalid value"),
    (["--bits", "-4"], "argument --bits: invalid choice"),
    (["--group-size", "-64"], "argument --group-size: invalid choice"),
    (["--report", "{tmp}"], "is a folder, not a regular file"),
    (["--report", "{tmp}/fifo"], "is a FIFO, not a regular file"),  # reading it would block forever
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_numbers_and_files_are_refused_before_any_work(capsys, tiny, tmp_path, args, words):
    os.mkfifo(tmp_path / "fifo")
    out = tmp_path / "new" / "out"
    args = [a.format(tmp=tmp_path) for a in args]
    assert_refused(here(capsys, tiny, out, *args), words, rc=2 if "argument" in words else 1, within=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]  # not even OUT's parent was made


def test_an_out_name_at_the_length_limit(capsys, tiny, tmp_path):
    assert_succeeds(capsys, tiny, tmp_path / ("m" * 255))  # the names beside it are shortened to fit


def test_a_place_it_cannot_write(capsys, monkeypatch, tiny, tmp_path):
    def mkdir(path, *args, **kw):  # as a read-only disk or a folder of someone else's answers (root ignores modes)
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "mkdir", mkdir)
    assert_refused(here(capsys, tiny, tmp_path / "out"), f"cannot write in {tmp_path} (Permission denied)")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_run_removes_the_parents_it_made(capsys, tmp_path):
    src = tmp_path / "src"
    src.mkdir()  # a folder without config.json: the run fails after claiming OUT
    assert_refused(here(capsys, src, tmp_path / "a" / "b" / "out"), "config.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("data,words", [
    (b"\xff\xfe\x00\x81garbage", "is not UTF-8 text: byte 0xff at offset 0 (invalid start byte)"),  # UTF-16
    ("caf\u00e9 au lait".encode("latin-1"), "is not UTF-8 text: byte 0xe9 at offset 3"),
    (b"ok \xc3(", "is not UTF-8 text: byte 0xc3 at offset 3"),
    (b"", "is too short: it gives 0 token(s) and the report needs at least two"),
    (b"a", "is too short: it gives 1 token(s)"),  # the byte tokenizer: one token, and a window scores none
], ids=["utf16", "latin1", "cut", "empty", "one-token"])
def test_a_bad_report_text_is_refused_before_any_work(capsys, monkeypatch, tiny, tmp_path, data, words):
    text = tmp_path / "text.txt"
    text.write_bytes(data)
    planned, plan = [], Converter.plan
    monkeypatch.setattr(Converter, "plan", lambda self: planned.append(self) or plan(self))
    assert_refused(here(capsys, tiny, tmp_path / "new" / "out", "--report", text), f"--report: {text} {words}", within=5)
    assert planned == [] and sorted(tmp_path.iterdir()) == [text]  # not a tensor planned, not a folder made


def test_a_character_cut_at_the_report_read_limit_is_dropped_not_refused(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("a" * 127 + "\u00e9" * 10)  # --report-tokens 1 reads 128 bytes: the first é is cut in two
    assert read_text(text, 1) == "a" * 127
