"""Widgets of the chat screen: messages, the multi-line input, the status bar.

Text shown here comes from chat files and from the model: control characters in it are replaced (`printable`),
since Textual passes an escape sequence through to the terminal as it is.
"""

from __future__ import annotations

from typing import Optional

from textual import events
from textual.message import Message
from textual.widgets import Markdown, Static, TextArea

from app.chat_store import printable


class UserMessage(Static):
    """One of your messages, shown as typed (no markup)."""

    def __init__(self, text: str, index: int):
        super().__init__(printable(text), markup=False, classes="message user")
        self.index = index
        self.border_title = "You"


class AssistantMessage(Markdown):
    """A reply, rendered as markdown while it streams."""

    def __init__(self, text: str = "", index: Optional[int] = None, stopped: bool = False):
        super().__init__(printable(text), classes="message assistant")
        self.index = index
        self.border_title = "Assistant"
        if stopped:
            self.mark_stopped()

    def mark_stopped(self) -> None:
        self.add_class("stopped")
        self.border_subtitle = "stopped"


class Notice(Static):
    """A line in the conversation that is not a message: context trimmed, an error, a hint."""

    def __init__(self, text: str, kind: str = "info"):
        super().__init__(printable(text), markup=False, classes=f"notice {kind}")


class ChatInput(TextArea):
    """Multi-line input: Enter sends; Shift+Enter, Alt+Enter or Ctrl+J start a new line (pasted text keeps its
    newlines); Up in an empty input edits your last message."""

    NEWLINE_KEYS = ("shift+enter", "alt+enter", "ctrl+j")

    class Submitted(Message):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

    class EditPrevious(Message):
        """Up in an empty input (or on the first line of a message being edited): edit your previous message."""

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self.text))
            return
        if event.key == "up" and (not self.text or (self.has_class("editing") and self.cursor_location[0] == 0)):
            event.stop()
            event.prevent_default()
            self.post_message(self.EditPrevious())
            return
        if event.key in self.NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        await super()._on_key(event)


class StatusBar(Static):
    """model │ tok/s │ context used/limit │ memory."""

    def __init__(self, **kwargs):
        super().__init__(markup=False, **kwargs)  # a model's name is a user's path: "[" in it is no markup

    def show(self, model: str, tps: Optional[float], used: int, limit: int, memory_gb: float, note: str = "") -> None:
        rate = "– tok/s" if tps is None else f"{tps:.1f} tok/s"
        parts = [model, rate, f"ctx {used}/{limit}", f"mem {memory_gb:.2f} GB"]
        if note:
            parts.append(note)
        self.update(printable(" │ ".join(parts)))
