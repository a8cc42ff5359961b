"""What a user of mlx-lm or Ollama expects of `mlxm`: --context refused above the model's maximum, and the rest of
issue 15's command-line conventions."""

from __future__ import annotations

import json

import pytest

from app import cli


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("command", ["chat", "generate"])
def test_context_above_the_models_maximum_is_refused_with_both_numbers(command, tiny_folder, capsys, monkeypatch):
    from app.tui import ChatApp

    monkeypatch.setattr(ChatApp, "run", lambda self: pytest.fail("the chat must not start"))
    args = [command, "-m", str(tiny_folder), "--context", "1000"] + (["-p", "Hi"] if command == "generate" else [])
    assert cli.main(args) == 1
    line = one_line(capsys.readouterr().err)
    assert "--context 1000" in line and "maximum of 256" in line, line  # the tiny model's max_position_embeddings


def test_generate_context_limits_the_reply(tiny_folder, capsys):
    """--context 12 with a 5-token prompt leaves room for 7 tokens, whatever --max-tokens says."""
    from app import model_arg

    _, tokenizer, _ = model_arg.load(str(tiny_folder))
    assert cli.main(["generate", "-m", str(tiny_folder), "-p", "Hello", "--raw", "--context", "12",
                     "--max-tokens", "100", "--temp", "0"]) == 0
    out = capsys.readouterr().out
    assert len(tokenizer.encode(out, add_special_tokens=False)) <= 12 - len(tokenizer.encode("Hello"))


# ---------------------------------------------------------------- generate: the chat template by default


def generated(tiny, ids_or_text, n=20):
    import mlxmodels

    return mlxmodels.generate(*tiny, ids_or_text, max_tokens=n)


def test_generate_applies_the_chat_template_by_default(tiny_folder, tiny, capsys):
    _, tok = tiny
    chat = tok.apply_chat_template([{"role": "user", "content": "What is MLX?"}], tokenize=True)
    assert chat != tok.encode("What is MLX?")
    for extra in ([], ["--chat"]):  # --chat: the old spelling of the default, still accepted
        assert cli.main(["generate", "-m", str(tiny_folder), "-p", "What is MLX?", "--max-tokens", "20", *extra]) == 0
        assert capsys.readouterr().out == generated(tiny, chat)
    assert cli.main(["generate", "-m", str(tiny_folder), "-p", "What is MLX?", "--max-tokens", "20", "--raw"]) == 0
    assert capsys.readouterr().out == generated(tiny, "What is MLX?")


def test_generate_system_alone_implies_the_template(tiny_folder, tiny, capsys):
    _, tok = tiny
    chat = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                                   tokenize=True)
    assert cli.main(["generate", "-m", str(tiny_folder), "-p", "Hi", "--system", "Be brief.", "--max-tokens",
                     "20"]) == 0
    assert capsys.readouterr().out == generated(tiny, chat)


@pytest.mark.parametrize("flag", [["--system", "Be brief."], ["--no-think"], ["--template-kwargs", '{"a": 1}']])
def test_generate_raw_refuses_what_belongs_to_the_template(flag, tiny_folder, capsys):
    assert cli.main(["generate", "-m", str(tiny_folder), "-p", "Hi", "--raw", *flag]) == 1
    assert "which --raw leaves out" in one_line(capsys.readouterr().err)


def test_generate_raw_and_chat_together_is_a_usage_error(tiny_folder, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "-m", str(tiny_folder), "-p", "Hi", "--raw", "--chat"])
    assert e.value.code == 2 and "not allowed with" in one_line(capsys.readouterr().err)


def test_generate_without_a_template_sends_the_text(tmp_path, capsys):
    """A base model (no chat template): plain text by default; --system or --chat cannot be honoured."""
    import mlxmodels
    from tests.app.tiny import build_tiny

    folder = build_tiny(tmp_path / "base", chat_template="")
    base = mlxmodels.load(folder)
    assert cli.main(["generate", "-m", str(folder), "-p", "Once", "--max-tokens", "20"]) == 0
    assert capsys.readouterr().out == generated(base, "Once")
    for flag in (["--system", "Be brief."], ["--chat"]):
        assert cli.main(["generate", "-m", str(folder), "-p", "Once", *flag]) == 1
        assert "has none; prompt it with plain text" in one_line(capsys.readouterr().err)


# ---------------------------------------------------------------- mlx-lm's flag spellings, mlxm --version


def parsed(argv):
    from app import mlx_lm_flags

    return vars(cli.parser().parse_args(mlx_lm_flags.rewrite(argv)))


@pytest.mark.parametrize("theirs, ours", [
    (["chat", "--system-prompt", "Be brief."], ["chat", "--system", "Be brief."]),
    (["generate", "-p", "hi", "--system-prompt=Be brief."], ["generate", "-p", "hi", "--system", "Be brief."]),
    (["generate", "-p", "hi", "--draft-model", "org/small"], ["generate", "-p", "hi", "--draft", "org/small"]),
    (["generate", "-p", "hi", "--num-draft-tokens", "5"], ["generate", "-p", "hi", "--num-draft", "5"]),
    (["convert", "src", "out", "--q-bits", "8"], ["convert", "src", "out", "--bits", "8"]),
    (["convert", "src", "out", "--q-group-size=32"], ["convert", "src", "out", "--group-size", "32"]),
    (["convert", "--hf-path", "org/m", "--mlx-path", "out", "-q"], ["convert", "org/m", "out", "-q"]),
    (["convert", "--mlx-path=-out", "--hf-path=org/m"], ["convert", "--", "org/m", "-out"]),
    (["bench", "--num-trials", "3"], ["bench", "--trials", "3"]),
])
def test_mlx_lm_spellings_mean_our_flags(theirs, ours):
    assert parsed(theirs) == parsed(ours)


def test_mlx_lm_spellings_leave_the_rest_alone():
    from app import mlx_lm_flags

    argv = ["generate", "-p", "--q-bits", "--", "--hf-path"]  # not convert's, and nothing after --
    assert mlx_lm_flags.rewrite(argv) == argv
    assert mlx_lm_flags.rewrite(["convert", "a", "b", "--", "--q-bits"]) == ["convert", "a", "b", "--", "--q-bits"]


@pytest.mark.parametrize("argv, needle", [(["convert", "--hf-path", "org/m"], "needs --mlx-path"),
                                          (["convert", "--hf-path", "a", "--hf-path", "b", "--mlx-path", "c"],
                                           "--hf-path is given twice"),
                                          (["convert", "--q-bits", "7", "a", "b"], "--bits: invalid choice")])
def test_mlx_lm_spellings_mistakes_are_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and needle in one_line(capsys.readouterr().err)


def test_convert_with_mlx_lms_command_line(tiny_folder, tmp_path, capsys):
    """mlx-lm's own README command, spelled its way, makes the folder ours makes."""
    out = tmp_path / "q"
    assert cli.main(["convert", "--hf-path", str(tiny_folder), "--mlx-path", str(out), "-q", "--q-bits", "8",
                     "--q-group-size", "32"]) == 0
    q = json.loads((out / "config.json").read_text())["quantization"]
    assert q["bits"] == 8 and q["group_size"] == 32


def test_version(capsys):
    import mlx.core as mx

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("mlxm (mlxmodels) ") and f"MLX {mx.__version__}" in out
