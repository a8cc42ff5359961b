"""What a user of mlx-lm or Ollama expects of `mlxm`: --context refused above the model's maximum, and the rest of
issue 15's command-line conventions."""

from __future__ import annotations

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
    assert cli.main(["generate", "-m", str(tiny_folder), "-p", "Hello", "--context", "12",
                     "--max-tokens", "100", "--temp", "0"]) == 0
    out = capsys.readouterr().out
    assert len(tokenizer.encode(out, add_special_tokens=False)) <= 12 - len(tokenizer.encode("Hello"))
