"""`-m ollama:NAME[:TAG]` on a fake Ollama store built in tmp_path: a manifest per name and tag whose model layer is
a blob holding the tiny GGUF (tests/gguf_tiny.py). The hostile stores are in tests/hostile/test_ollama.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import mlxmodels
from app import cli
from mlxmodels.formats import ollama
from tests.gguf_tiny import write_tiny_gguf

pytest.importorskip("gguf")


def add_model(store: Path, gguf: Path, name: str = "registry.ollama.ai/library/tiny", tag: str = "latest",
              extra_layers: tuple = ()) -> Path:
    """Pull `gguf` into the store as Ollama does: the blob named by its SHA-256, a manifest listing it."""
    data = gguf.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / f"sha256-{digest}").write_bytes(data)
    layers = [*extra_layers, {"mediaType": ollama.MODEL_LAYER, "digest": f"sha256:{digest}", "size": len(data)}]
    manifest = store / "manifests" / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    return store / "blobs" / f"sha256-{digest}"


@pytest.fixture
def store(tmp_path, monkeypatch):
    root = tmp_path / "ollama-models"
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    return root


@pytest.fixture
def tiny_gguf(tmp_path):
    return write_tiny_gguf(tmp_path / "tiny.gguf")


TEMPLATE_LAYER = {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64, "size": 9}


def test_names_resolve_to_the_model_blob(store, tiny_gguf, tmp_path):
    blob = add_model(store, tiny_gguf, extra_layers=(TEMPLATE_LAYER,))
    other = add_model(store, write_tiny_gguf(tmp_path / "other.gguf", seed=1), tag="q8")
    user = add_model(store, write_tiny_gguf(tmp_path / "user.gguf", seed=2), name="registry.ollama.ai/someone/tiny")
    host = add_model(store, write_tiny_gguf(tmp_path / "host.gguf", seed=3), name="hf.co/org/tiny-GGUF", tag="Q4_0")
    from mlxmodels.load import resolve

    assert resolve("ollama:tiny") == blob.resolve() == resolve("ollama:tiny:latest")
    assert resolve("ollama:tiny:q8") == other.resolve()
    assert resolve("ollama:someone/tiny") == user.resolve()
    assert resolve("ollama:hf.co/org/tiny-GGUF:Q4_0") == host.resolve()
    assert len({blob, other, user, host}) == 4


def test_chat_ready_model_from_the_store(store, tiny_gguf, capsys):
    add_model(store, tiny_gguf)
    model, tokenizer = mlxmodels.load("ollama:tiny")
    want = mlxmodels.generate(model, tokenizer, "the world", max_tokens=8, temperature=0.0)
    assert cli.main(["generate", "-m", "ollama:tiny", "-p", "the world", "--raw", "--max-tokens", "8", "--temp", "0"]) == 0
    assert capsys.readouterr().out == want
    assert cli.main(["info", "-m", "ollama:tiny"]) == 0
    out = capsys.readouterr().out
    assert "ollama:tiny" in out and "GGUF version 3" in out


def test_convert_from_the_store(store, tiny_gguf, tmp_path):
    from quantize.convert import convert

    add_model(store, tiny_gguf)
    result = convert("ollama:tiny", tmp_path / "out")
    assert (result.folder / "tokenizer.json").is_file()
    model, _ = mlxmodels.load(result.folder)
    assert model.spec.num_layers == 2


@pytest.mark.parametrize("ref, needle", [
    ("ollama:missing", "`ollama pull missing`"),
    ("ollama:tiny:q2", "`ollama pull tiny:q2`"),
    ("ollama:someone/missing", "`ollama pull someone/missing`"),
])
def test_not_pulled_says_pull(store, tiny_gguf, ref, needle, capsys):
    add_model(store, tiny_gguf)
    assert cli.main(["generate", "-m", ref, "-p", "hi"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "not in Ollama's store" in err[0]


def test_missing_store(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "nowhere"))
    assert cli.main(["chat", "-m", "ollama:llama3.2"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0] and "OLLAMA_MODELS" in err[0]
    assert "ollama pull llama3.2" in err[0]


def test_default_store_is_in_home(tmp_path, monkeypatch):
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ollama.store() == tmp_path / ".ollama" / "models"
