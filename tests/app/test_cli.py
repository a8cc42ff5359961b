"""`mlxm` end to end on a tiny model: each subcommand, each user mistake's one-line message and exit code."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mlxmodels
from app import cli, model_arg

ROOT = Path(__file__).resolve().parents[2]
try:
    from mlxmodels.assets import default_model_path

    HAS_DEFAULT = (Path(default_model_path()) / "config.json").is_file()
except ImportError:
    HAS_DEFAULT = False
needs_default = pytest.mark.skipif(not HAS_DEFAULT, reason="the default model is not installed")


def mlxm(*args, input=None, env=None):
    """The real entry point in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], input=input, capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=120)


def one_line_error(stderr: str, *needles):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("mlxm") and "error:" in lines[0] and "Traceback" not in stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("command", ["chat", "generate", "convert", "bench", "info"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert f"usage: mlxm {command}" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "chat" in err and "generate" in err and "bench" in err and "info" in err


def test_generate_equals_api_generate(tiny_folder, tiny, capsys):
    model, tok = tiny
    args = ["generate", "-m", str(tiny_folder), "-p", "Once upon a time", "--raw", "--max-tokens", "40", "--temp", "0.9",
            "--top-p", "0.95", "--top-k", "50", "--seed", "7"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    expected = mlxmodels.generate(model, tok, "Once upon a time", max_tokens=40, temperature=0.9, top_p=0.95,
                                  top_k=50, seed=7)
    assert out == expected and out  # not a terminal: exactly the text, no colour, no added newline


def test_generate_chat_and_stdin_end_to_end(tiny_folder, tiny):
    model, tok = tiny
    r = mlxm("generate", "-m", tiny_folder, "-p", "-", "--chat", "--max-tokens", "30", "-v", input="What is MLX?")
    assert r.returncode == 0, r.stderr
    ids = tok.apply_chat_template([{"role": "user", "content": "What is MLX?"}], tokenize=True)
    assert r.stdout == mlxmodels.generate(model, tok, ids, max_tokens=30)
    assert "tok/s" in r.stderr and "\x1b[" not in r.stderr  # stats on stderr, no colour in a pipe


@needs_default
def test_generate_with_default_model():
    r = mlxm("generate", "-p", "12 + 7 =", "--max-tokens", "8")
    assert r.returncode == 0, r.stderr


def test_mistakes_give_one_line_and_exit_code(tmp_path, tiny_folder):
    r = mlxm("generate", "-m", tmp_path / "missing", "-p", "hi")
    assert r.returncode == 1
    one_line_error(r.stderr, "missing", "not a model folder")

    weird = tmp_path / "weird"
    weird.mkdir()
    (weird / "config.json").write_text(json.dumps({"model_type": "no_such_family"}))
    r = mlxm("info", "-m", weird)
    assert r.returncode == 1
    one_line_error(r.stderr, "unsupported model_type 'no_such_family'")

    r = mlxm("generate", "-m", tiny_folder, "-p", "hi", "--temp", "hot")
    assert r.returncode == 2
    one_line_error(r.stderr, "--temp", "'hot'")

    r = mlxm("generate", "-m", tiny_folder, "-p", "hi", "--max-tokens", "0")
    assert r.returncode == 2
    one_line_error(r.stderr, "--max-tokens")

    r = mlxm("bench", "-m", tiny_folder, "-n", "-3")
    assert r.returncode == 2
    one_line_error(r.stderr, "-n")

    r = mlxm("chat", "-m", tiny_folder, "--top-p", "1.5")
    assert r.returncode == 2
    one_line_error(r.stderr, "--top-p")


def test_in_process_mistakes(tmp_path, tiny_folder, capsys, monkeypatch):
    no_tok = tmp_path / "no_tokenizer"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_tok / f).write_bytes((tiny_folder / f).read_bytes())
    assert cli.main(["generate", "-m", str(no_tok), "-p", "hi"]) == 1
    one_line_error(capsys.readouterr().err, "no tokenizer files")

    if HAS_DEFAULT:
        monkeypatch.setattr("mlxmodels.assets.default_model_path", lambda: tmp_path / "nothing")
    assert cli.main(["info"]) == 1
    one_line_error(capsys.readouterr().err, model_arg.NO_DEFAULT)

    assert cli.main(["chat", "-m", str(tiny_folder), "--open", "20990101-000000-ffffff"]) == 1
    one_line_error(capsys.readouterr().err, "no saved chat")


def test_info(tiny_folder, capsys):
    assert cli.main(["info", "-m", str(tiny_folder)]) == 0
    out = capsys.readouterr().out
    assert "llama" in out and "all 2 global" in out and "KV cache" in out and "256 B per token" in out
    assert cli.main(["info", "-m", str(tiny_folder), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    # 2 layers x (K and V) x 2 KV heads x head dim 8 x 4 bytes
    assert r["kv_bytes_per_token"] == 2 * 2 * 2 * 8 * 4 and r["kv_bytes_full_context"] == 256 * r["kv_bytes_per_token"]
    model, _ = mlxmodels.load(tiny_folder)
    from mlx.utils import tree_flatten

    params = sum(p.size for _, p in tree_flatten(model.parameters()))
    assert r["params_total"] == r["params_active"] == params
    assert r["load_bytes"] == params * 4 and r["quantization"] == "none (float32 weights)"


@needs_default
def test_info_sparse_default_model(capsys):
    assert cli.main(["info", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["family"] == "deepseek_v3" and r["moe_layers"] and r["params_active"] < r["params_total"]
    spec = mlxmodels.load(model_arg.model_source(None))[0].spec
    item = {"float32": 4, "bfloat16": 2, "float16": 2}[r["compute_dtype"]]
    kv = sum(layer.attn.kv_lora_rank + layer.attn.qk_rope_head_dim for layer in spec.layers) * item
    assert r["kv_bytes_per_token"] == kv  # MLA caches only the latent and the rope key


def test_info_patterns_from_config_only(tmp_path, capsys):
    folder = tmp_path / "gemma3"
    folder.mkdir()
    cfg = {"model_type": "gemma3_text", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 12, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16,
           "sliding_window": 512, "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(cfg))
    assert cli.main(["info", "-m", str(folder), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["pattern"] == "5 local (window 512) : 1 global, repeated over 12 layers"
    per_layer = 2 * 1 * 16 * {"float32": 4, "bfloat16": 2}[r["compute_dtype"]]
    assert r["kv_bytes_full_context"] == per_layer * (10 * 512 + 2 * 8192)  # sliding layers stop at the window
    assert r["memory_source"].startswith("config estimate")


def test_info_pattern_helpers():
    from app.info import pattern, ranges

    assert pattern(["chunked (8192)"] * 3 + ["global"]) == "3 chunked (8192) : 1 global"
    assert pattern(["local", "global"] * 3) == "1 local : 1 global, repeated over 6 layers"
    assert ranges([3, 7, 11, 15]) == "every 4th from 3 (3, 7, ..., 15)"
    assert ranges([0, 1, 2, 5]) == "0-2, 5"


def test_convert_then_generate(tiny_folder, tmp_path, capsys):
    out = tmp_path / "q4"
    assert cli.main(["convert", str(tiny_folder), str(out), "-q", "--group-size", "32"]) == 0
    capsys.readouterr()
    assert cli.main(["info", "-m", str(out)]) == 0
    assert "affine 4-bit, group 32" in capsys.readouterr().out
    assert cli.main(["generate", "-m", str(out), "-p", "hi", "--max-tokens", "5"]) == 0
    assert cli.main(["convert", str(tiny_folder), str(out)]) != 0  # exists, no --force: one line
    one_line_error(capsys.readouterr().err)


def test_chat_end_to_end(tiny_folder, monkeypatch, capsys):
    """`mlxm chat` loads the model, runs the app (driven headless here), and saves the chat."""
    from textual.app import App

    from app.chat_store import ChatStore
    from app.tui import ChatApp
    from tests.app.pilot import send

    seen = {}

    async def auto_pilot(pilot):
        await send(pilot, "Hi")
        seen["reply"] = pilot.app.session.messages[-1]["content"]
        seen["limit"] = pilot.app.session.context_limit
        seen["sampling"] = pilot.app.session.sampling
        pilot.app.exit()

    monkeypatch.setattr(ChatApp, "run", lambda self: App.run(self, headless=True, auto_pilot=auto_pilot, size=(90, 30)))
    assert cli.main(["chat", "-m", str(tiny_folder), "--context", "128", "--temp", "0", "--max-tokens", "12",
                     "--system", "Be brief."]) == 0
    assert seen["limit"] == 128 and seen["sampling"].max_tokens == 12
    chats, _ = ChatStore().list()
    assert len(chats) == 1
    saved = ChatStore().load(chats[0].id)
    assert saved.system == "Be brief." and saved.messages[-1]["content"] == seen["reply"]
