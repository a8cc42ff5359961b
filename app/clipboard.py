"""What the chat copies: the last reply's answer, or one of its code blocks (fenced or indented), as the model
wrote them. The copying itself is Textual's App.copy_to_clipboard (an OSC 52 sequence: the terminal puts the
text on the system clipboard, over SSH too; macOS's Terminal ignores it, iTerm2, kitty, WezTerm and tmux with
set-clipboard on take it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from markdown_it import MarkdownIt


@dataclass(frozen=True)
class CodeBlock:
    language: str  # the fence's info string's first word; "" when it names none
    code: str

    def label(self, width: int = 60) -> str:
        """How a chooser lists it: language, size, first line."""
        lines = self.code.splitlines() or [""]
        first = lines[0].strip()
        head = f"{self.language or 'code'} · {len(lines)} line{'s' * (len(lines) != 1)} · "
        room = max(width - len(head), 8)
        return head + (first if len(first) <= room else first[:room - 1] + "…")


def last_reply(messages: List[dict]) -> Optional[dict]:
    """The newest assistant message with an answer (a reply that ended while thinking has none)."""
    return next((m for m in reversed(messages) if m["role"] == "assistant" and m["content"].strip()), None)


def code_blocks(markdown: str) -> List[CodeBlock]:
    """The code blocks of a reply, in order, parsed as the chat renders it (so an unclosed fence of a stopped
    reply still counts: it runs to the end, as shown)."""
    out = []
    for token in MarkdownIt("commonmark").parse(markdown):
        if token.type in ("fence", "code_block"):
            language = token.info.split()[0] if token.info.strip() else ""
            out.append(CodeBlock(language, token.content))
    return out
