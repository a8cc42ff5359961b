"""Progress bars only on a terminal: `mlxm convert` and `mlxm bench` draw theirs (and let huggingface_hub draw its
download bars) only when stderr is a terminal; in a pipe or a log, stderr holds errors alone."""

import io
import sys

import pytest
from huggingface_hub.utils import are_progress_bars_disabled

from app import progress
from app.cli import main
from tests.oracle import build_tiny_llama


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny"))


def convert_stderr(tiny, out, monkeypatch, stderr):
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["convert", str(tiny), str(out)]) in (0, None)
    return stderr.getvalue()


def test_convert_draws_its_bar_only_on_a_terminal(tiny, tmp_path, monkeypatch):
    assert convert_stderr(tiny, tmp_path / "piped", monkeypatch, io.StringIO()) == ""
    assert "convert:" in convert_stderr(tiny, tmp_path / "tty", monkeypatch, Terminal())


@pytest.mark.parametrize("stderr, drawn", [(io.StringIO(), False), (Terminal(), True)])
def test_hub_download_bars_follow_stderr(monkeypatch, stderr, drawn):
    monkeypatch.setattr(sys, "stderr", stderr)
    assert not are_progress_bars_disabled()
    with progress.hub_downloads():
        assert are_progress_bars_disabled() is not drawn
    assert not are_progress_bars_disabled()  # huggingface_hub's switch is put back


def test_bench_and_convert_download_under_the_rule(tiny, tmp_path, monkeypatch):
    seen = []

    def resolve(*args, **kw):  # where each command asks the Hub for a model
        seen.append(are_progress_bars_disabled())
        raise ValueError("stop here")

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr("app.model_arg.resolve_folder", resolve)
    monkeypatch.setattr("quantize.convert.resolve", resolve)
    assert main(["bench", "-m", "someorg/model"]) != 0
    assert main(["convert", "someorg/model", str(tmp_path / "out")]) != 0
    assert seen == [True, True]
