"""Dialogs about replies: choosing which code block to copy, exporting the chat to Markdown. Each is one
scrolling dialog (the app's #dialog), so a 60x20 terminal still reaches everything."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from app.chat_export import chat_markdown, default_name, export_path, write_export
from app.chat_store import Chat, printable
from app.clipboard import CodeBlock


class CodeBlockScreen(ModalScreen[Optional[int]]):
    """The last reply's code blocks, the last one highlighted. Enter copies one, Esc closes. Returns its index."""

    BINDINGS = [Binding("escape", "close", "Close")]

    def __init__(self, blocks: List[CodeBlock]):
        super().__init__()
        self.blocks = blocks

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog"):
            yield Label("Copy a code block", classes="title")
            yield OptionList(*[Option(printable(b.label()), id=str(i)) for i, b in enumerate(self.blocks)],
                             id="blocks", markup=False)
            yield Static("Enter copies · Esc closes", classes="hint")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = len(self.blocks) - 1
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id))

    def action_close(self) -> None:
        self.dismiss(None)


class ExportScreen(ModalScreen[Optional[Path]]):
    """The path of the Markdown file (default: named from the chat's title, in the current folder). Enter or the
    button writes it; a file already there is replaced only on a second Enter for the same path. A problem shows
    as one line in the dialog, which stays open to fix the path. Returns the path written, or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, chat: Chat):
        super().__init__()
        self.chat = chat
        self.confirmed: Optional[Path] = None  # the existing file a second Enter may replace

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog"):
            yield Label("Export the chat to Markdown", classes="title")
            yield Label("File, or a folder to write it in")
            yield Input(default_name(self.chat), id="path", compact=True)
            yield Static("", id="error", markup=False)
            with Horizontal(id="buttons"):
                yield Button("Export (Enter)", id="export", variant="primary")
                yield Button("Cancel (Esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.confirmed = None
        self.query_one("#error", Static).update("")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_export()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "export":
            self.action_export()
        else:
            self.action_cancel()

    def action_export(self) -> None:
        error = self.query_one("#error", Static)
        try:
            path = export_path(self.query_one(Input).value, self.chat)
            write_export(path, chat_markdown(self.chat), overwrite=path == self.confirmed)
        except FileExistsError:
            self.confirmed = path
            error.update(f"{printable(str(path))} already exists: Enter again replaces it, or change the name.")
            return
        except ValueError as e:
            error.update(printable(str(e)))
            return
        except OSError as e:
            error.update(f"Could not write {printable(str(path))}: {printable(e.strerror or str(e))}")
            return
        self.dismiss(path)

    def action_cancel(self) -> None:
        self.dismiss(None)
