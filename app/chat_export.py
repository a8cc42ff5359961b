"""A chat as a Markdown file: a title, the model and the system prompt, then each message under a heading, a
reply's reasoning folded in a <details> block (collapsed where Markdown renders HTML, a quote elsewhere).

The file appears whole or not at all (a temporary file beside it, renamed onto it), and an existing file is only
replaced when the caller says so (the dialog asks first).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

from app.chat_store import Chat, printable

NAME_LENGTH = 48  # characters of the title in a default file name


def chat_markdown(chat: Chat) -> str:
    """The whole chat, every message (those out of the model's context too), as Markdown; control characters
    (escape sequences a model or a pasted text put there) become U+FFFD, as on the screen."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(chat.updated or time.time()))
    out = [f"# {chat.display_title()}", "", f"*{chat.model or 'unknown model'} · {when}*", ""]
    if chat.system.strip():
        out += ["## System prompt", "", chat.system.strip(), ""]
    for m in chat.messages:
        if m["role"] == "user":
            out += ["## You", "", m["content"].strip(), ""]
            continue
        out += ["## Assistant", ""]
        reasoning = (m.get("reasoning_content") or "").strip()
        if reasoning:
            tokens = m.get("reasoning_tokens") or 0
            summary = f"Thinking ({tokens} tokens)" if tokens else "Thinking"
            quoted = [f"> {line}".rstrip() for line in reasoning.splitlines()]
            out += ["<details>", f"<summary>{summary}</summary>", "", *quoted, "", "</details>", ""]
        out += [m["content"].strip() or "*(no answer)*", ""]
        if m.get("stopped"):
            out += ["*(stopped)*", ""]
    return printable("\n".join(out))  # no escape sequence runs when the file is printed in a terminal


def default_name(chat: Chat) -> str:
    """A file name from the chat's title: its words, lowercase, joined by "-" (`chat.md` for a title without)."""
    words = re.findall(r"[^\W_]+", chat.display_title().lower())
    stem = "-".join(words)[:NAME_LENGTH].strip("-") or "chat"
    return f"{stem}.md"


def export_path(text: str, chat: Chat) -> Path:
    """The file a typed path names: `~` expanded, relative to the current folder, a folder gets the default name.
    Raises ValueError, in one line, for an empty path or a folder that does not exist."""
    text = text.strip()
    if not text:
        raise ValueError("type the path of the Markdown file to write")
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        path = path / default_name(chat)
    if not path.parent.is_dir():
        raise ValueError(f"{path.parent}: no such folder; create it first or pick another path")
    return path


def write_export(path: Path, text: str, overwrite: bool = False) -> None:
    """Write `text` to `path` atomically. FileExistsError when something is there and `overwrite` is False; an
    OSError leaves no temporary file behind."""
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(f"{path} already exists")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)  # as a plain open() would make it, not mkstemp's 0600
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
