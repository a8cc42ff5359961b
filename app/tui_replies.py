"""The chat's actions on replies, mixed into ChatApp: show every reply's stats, copy the last reply or one of its
code blocks, export the chat to Markdown. They read the app's session and log and use Textual's App (notify,
push_screen, copy_to_clipboard); the keys are in ChatApp.BINDINGS, the palette entries in `reply_commands`."""

from __future__ import annotations

from typing import Optional

from textual.app import SystemCommand

from app.clipboard import code_blocks, last_reply
from app.tui_reply_screens import CodeBlockScreen, ExportScreen
from app.tui_widgets import ReplyStats


class ReplyActions:
    ACTIONS = {"toggle_stats", "copy_reply", "copy_code", "export"}  # the main screen's only

    def reply_commands(self):
        """The command palette's entries for these actions."""
        yield SystemCommand("Toggle reply stats", "Tokens, speed and time to first token under every reply (Ctrl+S)",
                            self.action_toggle_stats)
        yield SystemCommand("Copy reply", "The last reply to the clipboard (F2)", self.action_copy_reply)
        yield SystemCommand("Copy code block", "A code block of the last reply to the clipboard (F3)",
                            self.action_copy_code)
        yield SystemCommand("Export to Markdown", "This chat as a Markdown file (F4)", self.action_export)

    def action_toggle_stats(self) -> None:
        """Show or hide every reply's stats line (ReplyStats): a view setting, not saved with the chat."""
        log = self.log_view
        log.set_class(not log.has_class(ReplyStats.STATS_SHOWN), ReplyStats.STATS_SHOWN)

    def action_copy_reply(self) -> None:
        reply = last_reply(self.session.messages)
        if reply is None:
            self.notify("No reply to copy yet.")
            return
        self.copy_to_clipboard(reply["content"])
        self.notify(f"Copied the last reply ({len(reply['content']):,} characters).")

    def action_copy_code(self) -> None:
        """The last reply's code block, or, when it has several, the one picked in a dialog."""
        reply = last_reply(self.session.messages)
        blocks = code_blocks(reply["content"]) if reply is not None else []
        if not blocks:
            self.notify("The last reply has no code block." if reply else "No reply to copy yet.")
            return

        def copy(index: Optional[int]) -> None:
            if index is not None:
                self.copy_to_clipboard(blocks[index].code)
                self.notify(f"Copied the {blocks[index].language or 'code'} block "
                            f"({len(blocks[index].code.splitlines())} lines).", markup=False)
        if len(blocks) == 1:
            copy(0)
        else:
            self.push_screen(CodeBlockScreen(blocks), copy)

    async def action_export(self) -> None:
        if not await self._idle():
            return
        if not self.session.messages:
            self.notify("Nothing to export yet; send a message first.")
            return
        self.push_screen(ExportScreen(self.session.chat),
                         lambda path: path and self.notify(f"Exported to {path}.", markup=False))
