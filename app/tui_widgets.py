"""Widgets of the chat screen: messages (a reply's reasoning in a collapsible section above it), the multi-line
input, the status bar.

Text shown here comes from chat files and from the model: control characters in it are replaced (`printable`),
since Textual passes an escape sequence through to the terminal as it is.
"""

from __future__ import annotations

import time
from typing import Optional

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.containers import Horizontal
from textual.widgets import Collapsible, Footer, Markdown, Sparkline, Static, TextArea

from app.chat_store import printable
from app.reply_stats import stats_line
from app.sizes import human_bytes


class UserMessage(Static):
    """One of your messages, shown as typed (no markup)."""

    def __init__(self, text: str, index: int):
        super().__init__(printable(text), markup=False, classes="message user")
        self.index = index
        self.border_title = "You"


WAITING, THINKING = "…", "thinking…"  # what an empty reply box shows: before the first token, while it reasons
NO_ANSWER, EMPTY = "no answer: the reply ended while thinking", "empty reply"


class AssistantMessage(Markdown):
    """A reply, rendered as markdown while it streams. While it has no text it shows a dimmed placeholder instead of
    an empty box: before the first token, while the model thinks, for a reply that ended inside its reasoning.

    The placeholder is a child of its own, shown or hidden, never markdown source: the answer's MarkdownStream
    appends to the source, and an update() replacing it (still parsing) would race with those appends."""

    def __init__(self, text: str = "", index: Optional[int] = None, stopped: bool = False,
                 placeholder: Optional[str] = None):
        super().__init__(printable(text), classes="message assistant")
        self.index = index
        self.border_title = "Assistant"
        self._placeholder = Static(placeholder or "", markup=False, classes="placeholder")
        self._placeholder.display = placeholder is not None
        if stopped:
            self.mark_stopped()

    def compose(self):
        yield self._placeholder

    @property
    def placeholder(self) -> Optional[str]:
        """The placeholder shown, None when hidden."""
        return str(self._placeholder.render()) if self._placeholder.display else None

    def mark_stopped(self) -> None:
        self.add_class("stopped")
        self.border_subtitle = "stopped"

    def show_placeholder(self, text: str) -> None:
        self._placeholder.update(text)
        self._placeholder.display = True

    def append(self, markdown: str):
        """The answer's stream appends here: its first text takes the placeholder's place."""
        if markdown:
            self._placeholder.display = False
        return super().append(markdown)


class ReplyStats(Static):
    """The line under a reply with what it cost (app.reply_stats). Every reply's is there, hidden until the log has
    the STATS_SHOWN class (toggled by a key), so showing them all is one class change, not a redraw."""

    STATS_SHOWN = "-stats"
    SCOPED_CSS = False  # the rule that shows it names its parent
    DEFAULT_CSS = """
    ReplyStats { display: none; color: $text-muted; margin: 0 0 1 0; padding: 0 1; }
    .-stats > ReplyStats { display: block; }
    ReplyStats.dropped { opacity: 50%; }
    """

    def __init__(self, stats: dict, index: Optional[int] = None):
        super().__init__(stats_line(stats), markup=False, classes="stats")
        self.index = index


class ThinkingSection(Collapsible):
    """A reply's reasoning, dimmed, above the reply, titled with its token count. It streams open while the model
    thinks and collapses when the answer begins; its title (click, or Tab then Enter) expands it again. The text is
    redrawn at most REDRAW times a second while it streams (a long reasoning is thousands of tokens)."""

    REDRAW = 10

    def __init__(self, text: str = "", tokens: int = 0, index: Optional[int] = None, streaming: bool = False):
        self.body = Static(printable(text), markup=False, classes="reasoning")
        self.text, self.tokens, self.streaming = text, tokens, streaming
        super().__init__(self.body, title=self._heading(), collapsed=not streaming, classes="message thinking")
        self.index = index
        self._drawn = 0.0

    def _heading(self) -> str:
        count = f" ({self.tokens} token{'s' * (self.tokens != 1)})" if self.tokens else ""
        return ("Thinking…" if self.streaming else "Thinking") + count

    def add(self, text: str, tokens: int) -> None:
        self.text += text
        self.tokens = tokens
        now = time.monotonic()
        if now - self._drawn >= 1 / self.REDRAW:
            self._drawn = now
            self._draw()

    def done(self) -> None:
        """The answer began or the reply ended: show all of it, collapsed."""
        if self.streaming:
            self.streaming = False
            self.collapsed = True
        self._draw()

    def _draw(self) -> None:
        self.body.update(printable(self.text))
        self.title = self._heading()


class Notice(Static):
    """A line in the conversation that is not a message: context trimmed, an error, a hint."""

    def __init__(self, text: str, kind: str = "info"):
        super().__init__(printable(text), markup=False, classes=f"notice {kind}")


class ChatInput(TextArea):
    """Multi-line input: Enter sends; Shift+Enter, Alt+Enter or Ctrl+J start a new line (pasted text keeps its
    newlines); Up in an empty input edits your last message; Ctrl+D in an empty input ends the chat (as in a
    shell), elsewhere it deletes the character on the right as before."""

    NEWLINE_KEYS = ("shift+enter", "alt+enter", "ctrl+j")
    BINDINGS = [Binding("ctrl+d", "end_of_input", "Delete right or quit", show=False)]

    class Submitted(Message):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

    class EditPrevious(Message):
        """Up in an empty input (or on the first line of a message being edited): edit your previous message."""

    class EndOfInput(Message):
        """Ctrl+D in an empty input."""

    def action_end_of_input(self) -> None:
        if self.text:
            self.action_delete_right()
        else:
            self.post_message(self.EndOfInput())

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


CHART_WIDTH = 16  # the tok/s chart beside the status (#chart's width in the app's CSS)


class StatusRow(Horizontal):
    """The status bar and, where there is room for both, the tok/s chart: the chart goes first when the figures
    need its room (a narrow terminal, a long model name), so it never hides the memory figure."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._figures: tuple = ()
        self._note = ""

    def compose(self):
        yield StatusBar(id="status")
        yield Sparkline([], id="chart", summary_function=max)

    def show(self, model: str, tps: Optional[float], used: int, limit: int, memory_gb: float, note: str = "") -> None:
        self._figures, self._note = (model, tps, used, limit, memory_gb), note
        self._fit()

    def on_resize(self, event: events.Resize) -> None:
        self._fit()

    def _fit(self) -> None:
        if not self._figures:
            return
        width = self.size.width or self.app.size.width
        chart = self.query_one(Sparkline)
        chart.display = len(status_line(*self._figures)) + 1 + CHART_WIDTH <= width
        self.query_one(StatusBar).update(status_line(*self._figures, self._note, width - CHART_WIDTH * chart.display))


def status_line(model: str, tps: Optional[float], used: int, limit: int, memory_gb: float, note: str = "",
                width: int = 0) -> str:
    """The status text; in `width` columns (0: any) the model's name is shortened (its start, a folder, goes first)
    so the numbers stay whole. A note comes last: a narrow bar cuts it before anything else."""
    rate = "– tok/s" if tps is None else f"{tps:.1f} tok/s"
    numbers = " │ ".join([rate, f"ctx {used}/{limit}", f"mem {human_bytes(memory_gb * 1e9)}"])
    model = printable(model)
    room = width - len(numbers) - len(" │ ")
    if width and len(model) > room:
        model = "…" + model[len(model) - room + 1:] if room > 1 else ""
    return " │ ".join(p for p in [model, numbers, printable(note)] if p)


class ChatFooter(Footer):
    """Textual's footer with the essential keys first (`ESSENTIAL`, actions in this order), so that a narrow
    terminal cuts the others; below `WIDE` columns it leaves out the command palette's key (Ctrl+P still opens
    it) to make room."""

    ESSENTIAL = ("send", "stop", "new_chat", "open_chats", "settings", "quit")
    WIDE = 80

    def compose(self):
        keys = list(super().compose())
        rank = {a: i for i, a in enumerate(self.ESSENTIAL)}
        return sorted(keys, key=lambda key: rank.get(getattr(key, "action", None), len(rank)))

    def on_resize(self, event: events.Resize) -> None:
        self.show_command_palette = event.size.width >= self.WIDE
