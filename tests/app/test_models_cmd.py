"""`mlxm ls` and `mlxm rm`: a fake Hugging Face cache (the layout huggingface_hub writes: blobs, snapshots linking
to them, refs) under a temporary HF_HOME, and folders recorded in the user data folder's list."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from tests.hostile.cli import assert_refused, mlxm


def cache_repo(hf_home: Path, repo_id: str, files: dict, rev: str = "a" * 40) -> Path:
    """models--org--name/{blobs/<sha256>, snapshots/<rev>/<file> -> ../../blobs/<sha256>, refs/main}. Every repo
    gets the same revision by default, as duplicated repos sharing a history do: `rm` must delete one of them."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    for name, data in files.items():
        data = data if isinstance(data, bytes) else json.dumps(data).encode()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / rev / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return repo


def record(data_dir: Path, path: Path, kind: str = "converted", used: float = None):
    data_dir.mkdir(parents=True, exist_ok=True)
    listing = data_dir / "models.json"
    entries = json.loads(listing.read_text()) if listing.exists() else []
    entries.append(dict(path=str(path.resolve()), kind=kind, used=time.time() if used is None else used))
    listing.write_text(json.dumps(entries))


@pytest.fixture
def machine(tmp_path, data_dir):
    """Two cached repos (one quantized Qwen3, one family we do not support), a repo without config.json, and a
    recorded converted folder; -> (env, paths)."""
    hf = tmp_path / "hf"
    qwen = cache_repo(hf, "org/tiny-qwen", {"config.json": {"model_type": "qwen3", "quantization": {
        "bits": 4, "group_size": 64}}, "model.safetensors": b"x" * 3000})
    other = cache_repo(hf, "org/vision", {"config.json": {"model_type": "clip", "torch_dtype": "float16"}})
    gguf_only = cache_repo(hf, "org/gguf-only", {"model.gguf": b"GGUF"})
    out = tmp_path / "converted"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "bfloat16"}))
    (out / "model.safetensors").write_bytes(b"y" * 2_500_000)
    record(data_dir, out, used=time.time() - 3 * 86400)
    env = {"HF_HOME": str(hf), "HF_HUB_CACHE": str(hf / "hub"), "MLXM_DATA_DIR": str(data_dir)}
    return env, dict(qwen=qwen, other=other, gguf_only=gguf_only, out=out)


def rows(stdout: str) -> dict:
    lines = stdout.splitlines()
    assert lines[0].split() == ["NAME", "FAMILY", "SIZE", "QUANTIZATION", "LAST", "USED"]
    return {line.split()[0]: line for line in lines[1:]}


def test_ls_lists_cache_and_converted_with_columns(machine):
    env, paths = machine
    run = mlxm(["ls"], env=env)
    assert run.rc == 0, run.stderr
    table = rows(run.stdout)
    assert set(table) == {"org/tiny-qwen", "org/vision", str(paths["out"].resolve())}  # no config.json: not a model
    from app.sizes import human_bytes

    blobs = sum(f.stat().st_size for f in (paths["qwen"] / "blobs").iterdir())  # the weights and config.json
    assert 3000 < blobs < 3100
    qwen = [c.strip() for c in table["org/tiny-qwen"].split("  ") if c.strip()]
    assert qwen[1:4] == ["qwen3", human_bytes(blobs), "4-bit, group 64"]
    assert "unknown (clip)" in table["org/vision"] and "float16" in table["org/vision"]
    converted = table[str(paths["out"].resolve())]
    assert "llama" in converted and "2.50 MB" in converted and "bfloat16" in converted and "3 days ago" in converted


def test_rm_yes_removes_exactly_that_repo(machine):
    env, paths = machine
    run = mlxm(["rm", "org/tiny-qwen", "--yes"], env=env)
    assert run.rc == 0, run.stderr
    assert "deleted" in run.stdout and "org/tiny-qwen" in run.stdout
    assert not paths["qwen"].exists()
    assert paths["other"].exists() and paths["gguf_only"].exists() and paths["out"].exists()
    assert set(rows(mlxm(["ls"], env=env).stdout)) == {"org/vision", str(paths["out"].resolve())}


def test_rm_yes_removes_a_converted_folder_and_its_entry(machine, data_dir):
    env, paths = machine
    run = mlxm(["rm", str(paths["out"]), "-y"], env=env)
    assert run.rc == 0, run.stderr
    assert not paths["out"].exists() and paths["qwen"].exists() and paths["out"].parent.exists()
    assert json.loads((data_dir / "models.json").read_text()) == []


def test_rm_without_terminal_or_yes_refuses(machine):
    env, paths = machine
    line = assert_refused(mlxm(["rm", "org/tiny-qwen"], env=env), "not a terminal", "--yes")
    assert "org/tiny-qwen" in line
    assert paths["qwen"].exists()


def test_rm_unknown_name_is_one_line_with_close_matches(machine):
    env, paths = machine
    line = assert_refused(mlxm(["rm", "org/tiny-qwn", "--yes"], env=env), "org/tiny-qwen")
    assert "did you mean" in line
    assert paths["qwen"].exists()


def test_rm_never_deletes_outside_the_cache_or_list(machine, tmp_path):
    env, _ = machine
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "config.json").write_text("{}")
    assert_refused(mlxm(["rm", str(stranger), "--yes"], env=env), "no model")
    assert stranger.exists()


def test_the_list_is_read_as_untrusted(data_dir, tmp_path):
    from app import models_cmd

    gone = tmp_path / "gone"
    home = Path.home()
    data_dir.mkdir(parents=True)
    (data_dir / "models.json").write_text(json.dumps([
        {"path": str(gone), "kind": "converted", "used": 1.0},  # no longer there
        {"path": "relative", "kind": "converted", "used": 1.0},
        {"path": str(tmp_path), "kind": "disk", "used": 1.0},
        {"path": str(tmp_path), "kind": "converted", "used": float("nan")},
        {"path": str(home), "kind": "converted", "used": 1.0},  # too wide to ever delete
        "junk", 7]))
    assert models_cmd.recorded_models() == []
    (data_dir / "models.json").write_text("[[[[" * 10000)
    assert models_cmd.read_list() == []


def test_a_decline_on_a_terminal_keeps_the_model(machine, monkeypatch, capsys):
    from app import models_cmd

    env, paths = machine
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda question: "n")
    models_cmd.cmd_rm(type("Args", (), {"name": str(paths["out"]), "yes": False})())
    assert paths["out"].exists() and "nothing deleted" in capsys.readouterr().err


def test_a_convert_is_recorded(tiny_folder, data_dir, tmp_path):
    """A successful convert records OUT; `ls` then lists it, with the list's time as last used."""
    out = tmp_path / "out"
    run = mlxm(["convert", tiny_folder, out], env={"MLXM_DATA_DIR": str(data_dir), "HF_HOME": str(tmp_path / "hf")},
               timeout=120)
    assert run.rc == 0, run.stderr
    table = rows(mlxm(["ls"], env={"MLXM_DATA_DIR": str(data_dir), "HF_HOME": str(tmp_path / "hf")}).stdout)
    assert "llama" in table[str(out.resolve())] and "just now" in table[str(out.resolve())]


def test_a_gguf_given_to_m_is_recorded_and_listed(tmp_path, data_dir):
    from argparse import Namespace

    from app import models_cmd

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))  # damaged: listed with an unknown family, never a crash
    models_cmd.remember_run(Namespace(command="info", model=str(gguf)))
    models_cmd.remember_run(Namespace(command="info", model="org/hub-id"))  # a Hub id is the cache's to list
    [model] = models_cmd.recorded_models()
    assert (model.name, model.family, model.size, model.kind) == (str(gguf), "unknown", 64, "gguf")
