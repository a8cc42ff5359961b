"""The chat's branches in the app, mixed into ChatApp: a dialog lists the versions an edit kept (where each forks,
its first line) and switches to one; the current version becomes a branch in turn (app.chat_branches). The key is
in ChatApp.BINDINGS, the palette entry in `branch_commands`."""

from __future__ import annotations

from typing import List, Optional

from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from app import chat_branches
from app.chat_branches import Branch


def branch_entry(b: Branch) -> str:
    where = f"after message {b.fork}" if b.fork else "from the start"
    return f"{b.first_line or '(ends at the fork)'}  ·  forks {where}  ·  {b.messages} messages"


class BranchScreen(ModalScreen[Optional[int]]):
    """The current chat's branches, newest first. Enter switches to one, Esc closes. Returns its index."""

    BINDINGS = [Binding("escape", "close", "Close")]

    def __init__(self, branches: List[Branch]):
        super().__init__()
        self.branches = branches

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog"):  # a short terminal scrolls it
            yield Label("Branches of this chat", classes="title")
            yield OptionList(*[Option(branch_entry(b), id=str(b.index)) for b in self.branches], id="branches",
                             markup=False)
            yield Static("Enter switches to it (this version is kept as a branch) · Esc closes", classes="hint")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = 0
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id))

    def action_close(self) -> None:
        self.dismiss(None)


class BranchActions:
    ACTIONS = {"branches"}  # the main screen's only

    def branch_commands(self):
        yield SystemCommand("Branches", "Go back to a version an edit replaced (Ctrl+B)", self.action_branches)

    async def action_branches(self) -> None:
        if not await self._idle():
            return
        branches = chat_branches.listing(self.session.chat)
        if not branches:
            self.notify("This chat has no branches: editing an earlier message keeps the turns it replaces as one.")
            return
        self.push_screen(BranchScreen(branches), self.switch_branch)

    async def switch_branch(self, index: Optional[int]) -> None:
        if index is None:
            return
        if self.editing is not None:
            self.end_edit()
        fork = chat_branches.switch(self.session.chat, index)
        await self.render_log()
        self.notify(f"Switched branch at message {fork}; the version you left is a branch now.", markup=False)
        await self.save()
