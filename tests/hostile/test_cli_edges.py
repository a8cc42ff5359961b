"""Command-line edges (issue 11, item 8): seeds outside what MLX takes, NaN and inf sampling values, a prompt that
is not UTF-8 or longer than the model's context, `bench -m` with a relative path and a benchmark worker that dies.
Each is one line on stderr naming the culprit (the flag, stdin and the byte offset, both token counts, the failed
tool and its log file), no traceback, and a status of 2 for a bad command line or 1 for bad input."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from app import cli
from app.prompt import fit_context
from mlxmodels.sample import make_logits_processors, make_sampler
from tests.app.tiny import build_tiny
from tests.hostile.cli import mlxm, assert_refused

CONTEXT = 64  # the tiny model's max_position_embeddings: prompts of a few dozen characters pass it


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama with an ASCII tokenizer (one token per character) and a 64-token context."""
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model", max_position_embeddings=CONTEXT)


@pytest.fixture
def model(tiny, tmp_path):
    """A fresh copy of the tiny model inside tmp_path, to damage at will."""
    return Path(shutil.copytree(tiny, tmp_path / "model"))


def in_process(capsys, *args) -> tuple:
    """`mlxm ARGS` in this process (nothing here can crash by signal): (status, stdout, the one stderr line)."""
    try:
        rc = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) <= 1, err
    return rc, out, lines[0] if lines else ""


# ---------------------------------------------------------------- --seed and sampling values


@pytest.mark.parametrize("seed", ["-1", str(2**64), str(10**30), "1.5", "0x10", "nan", "seven"])
def test_seed_outside_what_mlx_takes(capsys, tiny, seed):
    rc, out, line = in_process(capsys, "generate", "-m", tiny, "-p", "hi", "--seed", seed)
    assert rc == 2 and out == ""
    assert line.startswith("mlxm generate: error: argument --seed: ") and repr(seed) in line
    assert str(2**64 - 1) in line  # says what is accepted


def test_largest_seed_samples(capsys, tiny):
    rc, out, _ = in_process(capsys, "generate", "-m", tiny, "-p", "hi", "--max-tokens", "3", "--temp", "1",
                            "--seed", str(2**64 - 1))
    assert rc == 0 and out


@pytest.mark.parametrize("flag", ["--temp", "--top-p", "--min-p", "--repetition-penalty"])
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e400", "infinity"])
@pytest.mark.parametrize("command", ["generate", "chat"])
def test_nan_and_inf_sampling_values(capsys, tiny, command, flag, value):
    args = [command, "-m", tiny, f"{flag}={value}"] + (["-p", "hi"] if command == "generate" else [])
    rc, out, line = in_process(capsys, *args)
    assert rc == 2 and out == ""
    assert line.startswith(f"mlxm {command}: error: argument {flag}: invalid value {value!r}")


def test_the_sampler_refuses_nan_and_inf_too():
    """The API, for callers that skip the command line: NaN passes every `<` and `>` check, so it is named."""
    nan, inf = float("nan"), float("inf")
    for kwargs in (dict(temperature=nan), dict(temperature=inf), dict(top_p=nan), dict(min_p=nan),
                   dict(min_p=inf)):
        with pytest.raises(ValueError, match=f"{next(iter(kwargs))} must be"):
            make_sampler(**kwargs)
    for penalty in (nan, inf):
        with pytest.raises(ValueError, match="repetition_penalty must be a finite number"):
            make_logits_processors(repetition_penalty=penalty)


def test_nan_in_generation_config(capsys, model):
    """NaN is not JSON, but Python's reader takes it: the folder's check names the file before any sampling."""
    (model / "generation_config.json").write_text('{"do_sample": true, "temperature": NaN}')
    rc, out, line = in_process(capsys, "generate", "-m", model, "-p", "hi")
    assert rc == 1 and out == ""
    assert "generation_config.json" in line and "NaN" in line


# ---------------------------------------------------------------- the prompt: UTF-8, from argv or stdin


def test_stdin_not_utf8():
    run = mlxm(["generate", "-p", "-", "--max-tokens", "2"], stdin="héllo".encode("latin-1") + b" world")
    line = assert_refused(run, "stdin is not UTF-8 text: byte 0xe9 at offset 1", "iconv")
    assert run.stdout == "" and line.startswith("mlxm: error: ")


def test_argv_not_utf8():
    run = mlxm(["generate", "-p", "caf\udce9", "--max-tokens", "2"])  # sent as the bytes caf\xe9
    assert_refused(run, "the prompt (-p) is not UTF-8 text: byte 0xe9 at character 3")
    run = mlxm(["generate", "-p", "hi", "--chat", "--system", "\udcff"])
    assert_refused(run, "--system is not UTF-8 text")


def test_stdin_closed_empty_or_endless(capsys, tiny, monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)
    assert in_process(capsys, "generate", "-m", tiny, "-p", "-")[::2] == (
        1, "mlxm: error: -p - reads the prompt from stdin, but stdin is closed")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert in_process(capsys, "generate", "-m", tiny, "-p", "-")[::2] == (
        1, "mlxm: error: the prompt is empty (nothing on stdin)")
    monkeypatch.setattr("app.prompt.MAX_STDIN", 1000)  # `yes | mlxm generate -p -` must not read for ever
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"y\n" * 1000)))
    rc, _, line = in_process(capsys, "generate", "-m", tiny, "-p", "-")
    assert rc == 1 and line.startswith("mlxm: error: stdin holds more than")


# ---------------------------------------------------------------- a prompt longer than the context


def test_prompt_longer_than_the_context(capsys, tiny):
    rc, out, line = in_process(capsys, "generate", "-m", tiny, "-p", "x" * 100, "--raw")
    assert rc == 1 and out == ""
    assert line == ("mlxm: error: the prompt is 100 tokens and the model's context is 64: shorten it, or pass "
                    "--truncate-prompt to keep its last tokens")  # a token per character
    rc, out, line = in_process(capsys, "generate", "-m", tiny, "-p", "x" * 100, "--chat")
    assert rc == 1 and "the prompt is 1" in line and "context is 64" in line  # counted after the template


def test_truncate_prompt_keeps_the_last_tokens(capsys, tiny):
    rc, out, line = in_process(capsys, "generate", "-m", tiny, "-p", "x" * 100, "--raw", "--truncate-prompt",
                               "--max-tokens", "8", "-v")
    assert rc == 0 and out
    assert "prompt: 56 tokens" in line and "first 44 tokens were dropped" in line  # room for 8 more


def test_generation_stops_at_the_end_of_the_context(capsys, tiny):
    rc, out, line = in_process(capsys, "generate", "-m", tiny, "-p", "x" * 60, "--raw", "--max-tokens", "100", "-v")
    assert rc == 0 and "prompt: 60 tokens" in line
    assert int(line.split("generation: ")[1].split()[0]) <= 4


def test_fit_context_rules():
    ids = list(range(10))
    assert fit_context(ids, 5, 20, False) == (ids, 5)
    assert fit_context(ids, 50, 20, False) == (ids, 10)  # generation stops at the context's end
    assert fit_context(ids, 5, 12, True) == (ids[-7:], 5)  # room for max_tokens
    assert fit_context(ids, 50, 12, True) == (ids[-6:], 6)  # but at least half the context
    with pytest.raises(ValueError, match="the prompt is 10 tokens and the model's context is 10"):
        fit_context(ids, 1, 10, False)


# ---------------------------------------------------------------- bench


def test_bench_with_a_relative_path(tiny, tmp_path):
    """The workers run in another folder: the path is made absolute before they get it; no log is left behind."""
    shutil.copytree(tiny, tmp_path / "here" / "model")
    run = mlxm(["bench", "-m", "model", "-p", "16", "-g", "4", "-n", "1", "--json"], cwd=tmp_path / "here",
               env={"TMPDIR": str(tmp_path)})
    assert run.rc == 0, run.stderr
    assert json.loads(run.stdout)["folder"] == str(tmp_path / "here" / "model")
    assert not list(tmp_path.glob("mlxm-bench-*"))


def test_bench_worker_that_fails(model, tmp_path):
    """Damaged weights pass the driver's quick check and kill the worker: one line names the tool, its error and
    its log file, which is kept (the worker's traceback is there, not on the terminal)."""
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    run = mlxm(["bench", "-m", model, "-p", "16", "-g", "4", "-n", "1"], env={"TMPDIR": str(tmp_path)})
    line = assert_refused(run, "the benchmark could not start: the ours worker exited with status 1",
                   "model.safetensors", "(its log: ")
    log = Path(line.split("(its log: ")[1].rstrip(")"))
    assert log.parent.parent == tmp_path and "Traceback" in log.read_text()


def test_bench_past_the_context(capsys, tiny):
    rc, _, line = in_process(capsys, "bench", "-m", tiny, "-p", "60", "-g", "8", "-n", "1")
    assert rc == 1 and line == "mlxm: error: -p 60 and -g 8 make 68 tokens, past the model's context of 64: ask for fewer"


@pytest.mark.parametrize("args, needle, rc", [
    (["generate", "-p", "hi", "--stop", ""], "argument --stop: an empty value does nothing here", 2),
    (["chat", "--open", ""], "'' is not a chat id", 1),
    (["chat", "--context", "100000000"], "--context 100000000 is above the model's maximum of", 1),
])
def test_values_that_would_be_ignored_silently(tmp_path, args, needle, rc):
    assert_refused(mlxm(args, env={"MLXM_DATA_DIR": str(tmp_path)}), needle, rc=rc)
