"""`mlxm info|generate|bench -m x.gguf` on a tiny synthetic GGUF (tests/gguf_tiny.py): info reads the header only
and reports what it reports for a folder; the context length and sampling defaults come from the metadata."""

from __future__ import annotations

import json

import pytest

import mlxmodels
from app import cli, info, model_arg
from mlxmodels.formats.gguf import GGUFFile
from tests.gguf_tiny import CONTEXT, write_tiny_gguf

pytest.importorskip("gguf")


@pytest.fixture
def tiny_gguf(tmp_path):
    return write_tiny_gguf(tmp_path / "tiny.gguf", sampling={"temp": 0.6, "top_k": 20, "top_p": 0.95,
                                                              "penalty_repeat": 1.1})


def test_info_reads_the_header_only(tiny_gguf, tmp_path, monkeypatch, capsys):
    from quantize.convert import convert

    folder = convert(tiny_gguf, tmp_path / "out").folder  # the same model as an MLX folder, for comparison

    def no_data(self, name):
        raise AssertionError(f"info read tensor {name}")

    monkeypatch.setattr(GGUFFile, "raw", no_data)
    report = info.describe(str(tiny_gguf))
    want = info.describe(str(folder))
    assert report["format"].startswith("GGUF version 3, 21 tensors (")
    assert "Q8_0" in report["format"] and "Q4_1" in report["format"] and "Q4_0" in report["format"]
    for key in ("family", "params_total", "layers", "attention", "pattern", "context_length", "kv_bytes_per_token",
                "quantization", "load_bytes", "compute_dtype", "memory_source"):
        assert report[key] == want[key], key
    assert report["context_length"] == CONTEXT and report["quantization"].startswith("affine 4-bit, group 32 (7 ")
    assert cli.main(["info", "-m", str(tiny_gguf)]) == 0
    out = capsys.readouterr().out
    assert "GGUF version 3" in out and f"{CONTEXT} tokens" in out


def test_context_and_sampling_from_metadata(tiny_gguf, tmp_path):
    assert model_arg.context_length(tiny_gguf) == CONTEXT
    assert model_arg.sampling_defaults(tiny_gguf) == {"temperature": 0.6, "top_k": 20, "top_p": 0.95,
                                                      "repetition_penalty": 1.1}
    plain = write_tiny_gguf(tmp_path / "plain.gguf")
    assert model_arg.sampling_defaults(plain) == {}  # no general.sampling.*: greedy, as a folder without one


def test_generate_on_gguf(tiny_gguf, capsys):
    args = ["generate", "-m", str(tiny_gguf), "-p", "the world", "--raw", "--max-tokens", "12", "--temp", "0"]
    assert cli.main(args) == 0
    model, tokenizer = mlxmodels.load(tiny_gguf)
    assert capsys.readouterr().out == mlxmodels.generate(model, tokenizer, "the world", max_tokens=12,
                                                         temperature=0.0)


def test_bench_on_gguf(tiny_gguf, capsys):
    assert cli.main(["bench", "-m", str(tiny_gguf), "-p", "8", "-g", "4", "--trials", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["tools"]) == ["ours"] and report["tools"]["ours"]["generation_tps"]["median"] > 0
    assert cli.main(["bench", "-m", str(tiny_gguf), "-p", "8", "-g", "4", "--compare", "mlx-lm"]) != 0
    assert "mlxm convert" in capsys.readouterr().err
