"""Modal screens of the chat app: saved chats, settings (system prompt, sampling, thinking). Each is one scrolling
dialog, so a small terminal (60x20) still reaches every field; Tab scrolls the focused one into view."""

from __future__ import annotations

import time
from typing import List, Optional, Tuple

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Select, Static, TextArea
from textual.widgets.option_list import Option

from app.chat_store import ChatInfo, ChatStore, Sampling, printable

SHOW_SKIPPED = 5  # skipped files named in the chat list's note


def chat_entry(c: ChatInfo) -> Text:
    """A saved chat in the list: its title, then (dimmed) the model it was made with, when it was last saved and
    how long it is, then its first line when the title is not that line already."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(c.updated))
    entry = Text(c.title, style="bold")
    entry.append(f"\n{c.model or 'unknown model'}  ·  {when}  ·  {c.messages} messages", style="dim")
    if c.first_line and not c.first_line.startswith(c.title.rstrip("…")):  # a title of its own
        entry.append(f"\n{c.first_line}", style="italic")
    return entry


class ChatListScreen(ModalScreen[Optional[str]]):
    """Saved chats, newest first, each with its model, date and first line. Enter opens one, Delete removes it, Esc closes. Returns the chat id or None."""

    BINDINGS = [Binding("escape", "close", "Close"), Binding("delete", "delete", "Delete")]

    def __init__(self, store: ChatStore):
        super().__init__()
        self.store = store
        self.chats: List[ChatInfo] = []
        self.skipped: List[str] = []

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog"):  # a short terminal scrolls it
            yield Label("Saved chats", classes="title")
            yield OptionList(id="chats", markup=False)
            yield Static("", id="note", markup=False)
            yield Static("Enter opens · Delete removes · Esc closes", classes="hint")

    def on_mount(self) -> None:
        self.refresh_list()
        self.query_one(OptionList).focus()

    def refresh_list(self) -> None:
        self.chats, self.skipped = self.store.list()
        options = self.query_one(OptionList)
        options.clear_options()
        for c in self.chats:
            options.add_option(Option(chat_entry(c), id=c.id))
        if self.chats:
            options.highlighted = 0
        note = "No saved chats yet." if not self.chats else ""
        if self.skipped:
            names = ", ".join(printable(name) for name in self.skipped[:SHOW_SKIPPED])  # names are untrusted text
            if len(self.skipped) > SHOW_SKIPPED:
                names += f" and {len(self.skipped) - SHOW_SKIPPED} more"
            note = (note + " " if note else "") + f"Skipped {len(self.skipped)} damaged file(s): {names}"
        self.query_one("#note", Static).update(note)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_delete(self) -> None:
        options = self.query_one(OptionList)
        if options.highlighted is None or not self.chats:
            return
        try:
            self.store.delete(self.chats[options.highlighted].id)
        except OSError as e:
            self.query_one("#note", Static).update(f"Could not delete it: {printable(str(e))}")
            return
        self.refresh_list()

    def action_close(self) -> None:
        self.dismiss(None)


FIELDS = [  # (attribute, label, input type)
    ("temperature", "Temperature (0: greedy)", "number"),
    ("top_p", "Top p (1: off)", "number"),
    ("top_k", "Top k (0: off)", "integer"),
    ("min_p", "Min p (0: off)", "number"),
    ("repetition_penalty", "Repetition penalty (1: off)", "number"),
    ("max_tokens", "Max reply tokens", "integer"),
    ("seed", "Seed (empty: random)", "integer"),
]


# Thinking: the chat template's enable_thinking (Qwen3, SmolLM3, ...), or unset: the template's own default
THINKING = [("default", "default"), ("on", "on"), ("off", "off")]
THINKING_VALUE = {"default": None, "on": True, "off": False}


class SettingsScreen(ModalScreen[Optional[Tuple[str, Sampling, Optional[bool]]]]):
    """System prompt, sampling settings and thinking (on, off, the model's default) of the current chat. Ctrl+S
    saves, Esc cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "save", "Save")]

    def __init__(self, system: str, sampling: Sampling, thinking: Optional[bool] = None):
        super().__init__()
        self.system, self.sampling, self.thinking = system, sampling, thinking

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog"):  # a short terminal scrolls it
            yield Label("Settings", classes="title")
            yield Label("System prompt")
            yield TextArea(printable(self.system), id="system")
            with Grid(id="fields"):
                for name, label, kind in FIELDS:
                    value = getattr(self.sampling, name)
                    yield Label(label)
                    yield Input("" if value is None else str(value), type=kind, id=name, compact=True)
                yield Label("Thinking (default: as the model's template says)")
                current = {True: "on", False: "off"}.get(self.thinking, "default")
                yield Select(THINKING, value=current, allow_blank=False, id="thinking", compact=True)
            yield Static("", id="error", markup=False)
            with Horizontal(id="buttons"):
                yield Button("Save (Ctrl+S)", id="save", variant="primary")
                yield Button("Cancel (Esc)", id="cancel")

    def on_mount(self) -> None:
        if self.app.is_headless:
            self.query_one("#system", TextArea).cursor_blink = False
        self.query_one("#system", TextArea).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.action_cancel()

    def action_save(self) -> None:
        values = {}
        try:
            for name, label, kind in FIELDS:
                text = self.query_one(f"#{name}", Input).value.strip()
                if not text and name == "seed":
                    values[name] = None
                    continue
                try:
                    values[name] = int(text) if kind == "integer" else float(text)
                except ValueError:
                    raise ValueError(f"{label.split(' (')[0]}: {text!r} is not a number") from None
            sampling = Sampling(**values).check()
        except ValueError as e:
            self.query_one("#error", Static).update(str(e))
            return
        thinking = THINKING_VALUE[self.query_one("#thinking", Select).value]
        self.dismiss((self.query_one("#system", TextArea).text, sampling, thinking))

    def action_cancel(self) -> None:
        self.dismiss(None)
