"""A chat as Markdown (app/chat_export.py): what the file holds, its default name, the refusals."""

from pathlib import Path

import pytest

from app.chat_export import chat_markdown, default_name, export_path, write_export
from app.chat_store import Chat


def chat(**kw) -> Chat:
    messages = [{"role": "user", "content": "Explain colours"},
                {"role": "assistant", "content": "", "reasoning_content": "line one\nline two", "reasoning_tokens": 9},
                {"role": "user", "content": "again"}, {"role": "assistant", "content": "Red\x1b[31m.", "stopped": True}]
    return Chat(**{"model": "tiny", "system": "Be brief.", "messages": messages, **kw})


def test_every_message_in_order_with_reasoning_folded_and_stops_marked():
    text = chat_markdown(chat())
    assert text.startswith("# Explain colours\n\n*tiny · ")  # the title as the chat list shows it
    order = ["## System prompt\n\nBe brief.", "## You\n\nExplain", "## Assistant", "## You\n\nagain",
             "## Assistant\n\nRed\ufffd[31m.\n\n*(stopped)*"]
    positions = [text.index(part) for part in order]
    assert positions == sorted(positions)
    assert ("<details>\n<summary>Thinking (9 tokens)</summary>\n\n> line one\n> line two\n\n</details>\n\n"
            "*(no answer)*") in text


@pytest.mark.parametrize("title, name", [("What is 2+2? Tell me!", "what-is-2-2-tell-me.md"), ("???", "chat.md"),
                                         ("Ünïcode wörds", "ünïcode-wörds.md"), ("a" * 80, "a" * 47 + ".md")])
def test_default_name_from_the_title(title, name):
    assert default_name(Chat(title=title)) == name  # display_title cuts at 47 characters and an ellipsis


def test_paths_typed_in_the_dialog(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    c = chat()
    assert export_path(" notes.md ", c) == Path("notes.md")  # relative: to the current folder
    assert export_path("~", c) == tmp_path / "explain-colours.md"
    for bad, message in [("", "type the path"), ("nowhere/x.md", "nowhere: no such folder")]:
        with pytest.raises(ValueError, match=message):
            export_path(bad, c)


def test_write_refuses_an_existing_file_or_link_unless_told(tmp_path):
    target, link = tmp_path / "a.md", tmp_path / "b.md"
    target.write_text("old")
    link.symlink_to(tmp_path / "elsewhere.md")  # dangling: still something there
    for path in (target, link):
        with pytest.raises(FileExistsError):
            write_export(path, "new")
    write_export(link, "new", overwrite=True)  # the link is replaced, not written through
    assert not link.is_symlink() and link.read_text() == "new" and not (tmp_path / "elsewhere.md").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md", "b.md"] and target.read_text() == "old"
