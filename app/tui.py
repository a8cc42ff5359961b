"""`mlxm chat`: a Textual chat with a local model.

The app is a thin shell over `ChatSession` (model-side state, KV cache reuse, context trimming) and `ChatStore`
(atomic JSON files). Replies run in the app's one MLX thread, which does all the MLX work and posts messages back
(TurnStarted, Piece per token, Failed, Finished); the UI thread only renders. Esc asks the session to stop after
the current token; the partial reply is kept. A thinking model's reasoning streams into a ThinkingSection above
the reply (which shows "thinking…" meanwhile) and collapses when the answer begins. An error in a turn is shown in
the conversation and the app keeps running; an unexpected exception anywhere else ends the app with `crash` set
(the CLI reports it in one line).

Leaving (Ctrl+Q, Ctrl+C twice or when idle, Ctrl+D in an empty input, SIGHUP or a vanished terminal, SIGTERM,
SIGINT) always takes one path, `shut_down`: stop the reply, wait for it to end, save, exit; whatever ends the
app, unmounting then lets the MLX thread finish and free what MLX keeps per thread before the interpreter shuts
down (see `_end_mlx_work`: without it the process aborts with "terminate called without an active exception").
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Markdown, Sparkline

from app.chat_session import ChatSession, Turn
from app.chat_store import Chat, ChatStore, data_dir, printable
from app.greedy_hint import same_reply_hint
from app.reply_stats import progress_text
from app.tui_branches import BranchActions
from app.tui_model_picker import ModelActions
from app.tui_replies import ReplyActions
from app.tui_screens import ChatListScreen, SettingsScreen
from app.tui_terminal import HangupSafeDriver
from app.tui_widgets import (EMPTY, NO_ANSWER, THINKING, WAITING, AssistantMessage, ChatFooter, ChatInput, Notice,
                             ReplyStats, StatusRow, ThinkingSection, UserMessage)

HELP = ("Enter sends · Shift+Enter or Ctrl+J: new line · Esc or Ctrl+C stops a reply · Ctrl+R regenerates · "
        "Ctrl+E edits your last message (↑ in an empty input too; again: the one before) · Ctrl+N new chat · "
        "Ctrl+O saved chats · Ctrl+B branches · Ctrl+T settings · Ctrl+S reply stats · F2 copies the reply, F3 a "
        "code block · F4 exports · F5 switches model · Ctrl+P every action · Ctrl+Q, or Ctrl+D/Ctrl+C in an empty "
        "input, quits")
QUIT_WAIT = 60.0  # seconds leaving waits for a reply to stop (a token, or one prompt chunk of a long prefill)
INTERRUPT_AGAIN = 2.0  # a second Ctrl+C within this many seconds quits

CSS = """
#log { height: 1fr; padding: 0 1; }
.message { margin: 0 0 1 0; padding: 0 1; }
.user { border: round $accent; }
.assistant { border: round $success; padding: 0 1; }
.assistant.stopped { border: round $warning; }
.assistant > *:last-child { margin-bottom: 0; }
.assistant .placeholder { color: $text-muted; text-style: italic; }
.thinking { margin: 0; padding: 0 0 0 1; background: transparent; border-top: none; color: $text-muted; }
.thinking > Contents { padding: 0 0 0 2; }
.thinking CollapsibleTitle { color: $text-muted; padding: 0; }
.thinking .reasoning { color: $text-muted; }
#log.-stats .assistant { margin-bottom: 0; }
.message.dropped { opacity: 50%; }
.message.editing { border: double $warning; }
.notice { color: $text-muted; margin: 0 0 1 0; padding: 0 1; }
.notice.warning { color: $warning; }
.notice.error { color: $error; text-style: bold; }
#input { height: auto; min-height: 3; max-height: 10; margin: 0 1; }
#input.editing { border: tall $warning; }
#bar { height: 1; margin: 0 1; }
#status { width: 1fr; height: 1; color: $text-muted; }
#chart { width: 16; height: 1; }
ModalScreen { align: center middle; }
#dialog { width: 80%; max-width: 100; height: auto; max-height: 90%; border: thick $primary; padding: 1 2;
          background: $surface; }
ModalScreen.-narrow #dialog { width: 100%; padding: 0 1; }
#dialog .title { text-style: bold; margin-bottom: 1; }
#dialog #chats { height: auto; max-height: 16; }
#dialog #system { height: 5; margin-bottom: 1; }
#dialog #fields { grid-size: 2; grid-columns: 1fr 16; grid-rows: 1; grid-gutter: 0 1; height: auto; }
#dialog #fields Select { width: 16; }
#dialog #error { color: $error; height: auto; }
#dialog #buttons { height: auto; margin-top: 1; }
#dialog .hint { color: $text-muted; margin-top: 1; }
"""


class Meter:
    """Memory in use (GB). Tests substitute a fixed one so screenshots hold no live numbers."""

    def memory_gb(self) -> float:
        import mlx.core as mx

        return mx.get_active_memory() / 1e9


class ChatApp(ReplyActions, BranchActions, ModelActions, App):
    TITLE = "mlxm chat"
    CSS = CSS
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (80, "-wide")]  # a narrow screen's dialogs take its whole width
    BINDINGS = [  # the footer puts send, stop, new, chats, settings and quit first (ChatFooter.ESSENTIAL)
        Binding("enter", "send", "Send"),  # the input sends on Enter itself; this is the footer's (clickable) key
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("ctrl+e", "edit", "Edit", priority=True),  # over the input's end-of-line (End still works)
        Binding("ctrl+n", "new_chat", "New"),
        Binding("ctrl+o", "open_chats", "Chats"),
        Binding("ctrl+t", "settings", "Settings"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("ctrl+c", "interrupt", show=False, priority=True),  # over the inputs' copy: it copies as before
        Binding("ctrl+s", "toggle_stats", "Stats", show=False),
        Binding("f2", "copy_reply", "Copy reply", show=False),
        Binding("f3", "copy_code", "Copy code", show=False),
        Binding("f4", "export", "Export", show=False),
        Binding("ctrl+b", "branches", "Branches", show=False),
        Binding("f5", "switch_model", "Model", show=False),
    ]

    class TurnStarted(Message):
        def __init__(self, turn: Turn):
            super().__init__()
            self.turn = turn

    class Piece(Message):
        """One token's text, split: what it adds to the reasoning and to the answer; `thinking`: the reply is inside
        its reasoning (which has taken `reasoning_tokens` so far)."""

        def __init__(self, reasoning: str, answer: str, thinking: bool, reasoning_tokens: int, tps: float,
                     tokens: int):
            super().__init__()
            self.reasoning, self.answer, self.thinking = reasoning, answer, thinking
            self.reasoning_tokens, self.tps, self.tokens = reasoning_tokens, tps, tokens

    class Progress(Message):
        """`done` of the prompt's `total` tokens are in the cache (the reused ones included)."""

        def __init__(self, done: int, total: int):
            super().__init__()
            self.done, self.total = done, total

    class Failed(Message):
        def __init__(self, error: str):
            super().__init__()
            self.error = error

    class Finished(Message):
        pass

    def __init__(self, model, tokenizer, model_name: str, context_limit: int, store: Optional[ChatStore] = None,
                 chat: Optional[Chat] = None, meter: Optional[Meter] = None):
        super().__init__()
        self.session = ChatSession(model, tokenizer, context_limit, chat)
        self.store = store or ChatStore()
        self.meter = meter or Meter()
        self.model_name = model_name
        self.generating = False
        self.editing: Optional[int] = None  # index of the message being edited
        self.draft = ""  # what the input held when an edit began: it comes back when the edit ends
        self.tps: Optional[float] = None
        self.tps_history: deque = deque(maxlen=48)
        self.turns = 0  # replies finished in this app (tests wait on it)
        self._turn: Optional[Turn] = None
        self._reply: Optional[AssistantMessage] = None
        self._thinking: Optional[ThinkingSection] = None  # the streaming reply's reasoning, once it has some
        self._stream = None
        self._last_draw = 0.0
        self._tokens = 0
        self._worker = None  # the Textual worker awaiting the current turn
        self._replaced: Optional[dict] = None  # the reply a regenerate dropped, to compare with the new one
        # One long-lived thread for all MLX work: MLX keeps streams and mx.compile traces per thread, so turns
        # reuse the traces, and the thread can free them itself before it ends (`_end_mlx_work`).
        self._mlx = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlx")
        self._mlx_used = False
        self._interrupted = 0.0  # when Ctrl+C was last pressed
        self._leaving = False
        self.crash: Optional[BaseException] = None  # the unexpected exception that ended the app

    def run(self, *args, **kwargs):
        """Run in the terminal; refuse without one (Textual would draw into a pipe and spin on its end)."""
        terminal = all(f is not None and f.isatty() for f in (sys.__stdin__, sys.__stderr__))
        if not (terminal or kwargs.get("headless")):
            raise ValueError("chat needs a terminal: its input and stderr must be one; "
                             "use `mlxm generate` in scripts and pipes")
        return super().run(*args, **kwargs)

    # ------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield VerticalScroll(id="log")
        yield ChatInput(id="input", placeholder="Message (Enter sends, Shift+Enter new line)")
        yield StatusRow(id="bar")
        yield ChatFooter()

    async def on_mount(self) -> None:
        chat_input = self.query_one(ChatInput)
        if self.is_headless:
            chat_input.cursor_blink = False
        else:  # a closed terminal (SIGHUP), `kill` (SIGTERM) or `kill -INT` leave like Ctrl+Q does
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.call_later, self.shut_down)
        chat_input.focus()
        await self.render_log()
        self.warn_other_model()  # `mlxm chat --open` a chat made with another model

    @property
    def log_view(self) -> VerticalScroll:
        return self.query_one("#log", VerticalScroll)

    async def render_log(self) -> None:
        """Show the current chat from scratch (after opening, editing, regenerating or starting one)."""
        log = self.log_view
        await log.remove_children()
        widgets = [Notice(f"Chatting with {self.model_name}. {HELP}", "info")]
        if self.session.chat.system.strip():
            widgets.append(Notice(f"System prompt: {self.session.chat.system.strip()}", "info"))
        for i, m in enumerate(self.session.messages):
            if m["role"] == "user":
                widgets.append(UserMessage(m["content"], i))
                continue
            reasoning = m.get("reasoning_content") or ""
            if reasoning or m.get("reasoning_tokens"):
                widgets.append(ThinkingSection(reasoning, m.get("reasoning_tokens", 0), i))
            empty = None if m["content"] else NO_ANSWER if reasoning else EMPTY
            widgets.append(AssistantMessage(m["content"], i, stopped=m.get("stopped", False), placeholder=empty))
            widgets.append(ReplyStats(m.get("stats"), i))
        await log.mount_all(widgets)
        self.mark_dropped()
        log.scroll_end(animate=False)
        log.anchor()
        self.update_status()

    def mark_dropped(self) -> None:
        start = self.session.chat.context_start
        for w in self.log_view.query(".message, .stats"):  # a reply's stats line dims with it
            w.set_class(getattr(w, "index", None) is not None and w.index < start, "dropped")

    def update_status(self, note: str = "") -> None:
        used = self.session.context_used
        if self.generating and self._turn is not None:
            used = self._turn.prompt_len + self._tokens
        if self.editing is not None and not note:
            note = "editing: Enter resends, Esc cancels"
        self.query_one(StatusRow).show(self.model_name, self.tps, used, self.session.context_limit,
                                       self.meter.memory_gb(), note)

    async def show_error(self, text: str) -> None:
        await self.log_view.mount(Notice(f"Error: {text}", "error"))
        self.log_view.scroll_end(animate=False)
        self.notify(printable(text), title="Error", severity="error", timeout=8, markup=False)

    # ------------------------------------------------------------ sending

    async def on_chat_input_submitted(self, event: ChatInput.Submitted) -> None:
        text = event.text.strip()
        if not text:
            return
        if self._leaving or not await self._idle():
            return
        chat_input = self.query_one(ChatInput)
        try:
            msgs = self.session.messages
            if self.editing is not None:
                self.session.edit(self.editing, text)
                self.end_edit()  # the input gets back the draft the edit interrupted
                await self.render_log()
            elif msgs and msgs[-1]["role"] == "user":  # the last message got no reply (an error): replace it
                self.session.edit(len(msgs) - 1, text)
                chat_input.clear()
                await self.render_log()
            else:
                self.session.add_user(text)
                chat_input.clear()
                await self.log_view.mount(UserMessage(text, len(self.session.messages) - 1))
        except ValueError as e:
            await self.show_error(str(e))
            return
        self.start_reply()

    def start_reply(self) -> None:
        self.generating = True
        self._tokens = 0
        self.log_view.anchor()
        self._worker = self.generate()

    @work(exclusive=True, group="generate")
    async def generate(self) -> None:
        self._mlx_used = True
        await asyncio.get_running_loop().run_in_executor(self._mlx, self._run_turn)

    def _run_turn(self) -> None:
        """In the MLX thread: every MLX call of a turn happens here."""
        try:
            turn = self.session.prepare()
            self.post_message(self.TurnStarted(turn))

            def progress(done: int, total: int) -> None:  # the session counts what it feeds; we show the prompt
                self.post_message(self.Progress(turn.reused + done, turn.prompt_len))

            for r in self.session.reply(turn, progress):
                self.post_message(self.Piece(r.reasoning, r.answer, r.thinking, r.reasoning_tokens, r.generation_tps,
                                             r.generation_tokens))
        except Exception as e:  # shown in the UI; the app keeps running
            self.post_message(self.Failed(_describe(e)))
        finally:
            self.post_message(self.Finished())

    async def on_chat_app_turn_started(self, event: TurnStarted) -> None:
        self._turn = event.turn
        if event.turn.dropped:
            n = self.session.chat.context_start  # all of them, not only those this turn dropped
            await self.log_view.mount(Notice(
                f"Context full ({self.session.context_limit} tokens): the oldest {n} message{'s' * (n != 1)} "
                "no longer reach the model (still shown and saved, dimmed).", "warning"))
            self.mark_dropped()
        self._reply = AssistantMessage(index=len(self.session.messages), placeholder=WAITING)
        await self.log_view.mount(self._reply)
        self.update_status()

    async def on_chat_app_piece(self, event: Piece) -> None:
        reply = self._reply
        if reply is not None and (event.thinking or event.reasoning) and self._thinking is None:
            self._thinking = ThinkingSection(index=reply.index, streaming=True)
            await self.log_view.mount(self._thinking, before=reply)
            reply.show_placeholder(THINKING)
        if self._thinking is not None:
            self._thinking.add(event.reasoning, event.reasoning_tokens)
            if not event.thinking:
                self._thinking.done()
        if event.answer and reply is not None:
            if self._stream is None:
                self._stream = Markdown.get_stream(reply)
            await self._stream.write(printable(event.answer))
        self._tokens = event.tokens
        if event.tokens > 1:
            self.tps = event.tps
        now = time.monotonic()
        if now - self._last_draw > 0.1:  # redraw the numbers ~10 times a second
            self._last_draw = now
            if event.tokens > 1:
                self.tps_history.append(event.tps)
                self.query_one(Sparkline).data = list(self.tps_history)
            self.update_status()

    def on_chat_app_progress(self, event: Progress) -> None:
        if self._reply is not None and self._tokens == 0:  # until the first token
            self._reply.show_placeholder(progress_text(event.done, event.total))

    async def on_chat_app_failed(self, event: Failed) -> None:
        await self.show_error(event.error)

    async def on_chat_app_finished(self, event: Finished) -> None:
        if self._stream is not None:
            await self._stream.stop()
        if self._thinking is not None:
            self._thinking.done()
        msgs = self.session.messages
        if self._reply is not None:
            replied = bool(msgs) and msgs[-1]["role"] == "assistant"
            if replied and msgs[-1].get("stopped"):
                self._reply.mark_stopped()
            if not replied:  # nothing was generated
                await self._reply.remove()
            elif self._stream is None:  # tokens, but no answer: all of it was reasoning (or nothing at all)
                self._reply.show_placeholder(NO_ANSWER if self._thinking is not None else EMPTY)
            if replied and not self._leaving:  # leaving: the log is being taken down; the stats are in the message
                await self.log_view.mount(ReplyStats(msgs[-1].get("stats"), self._reply.index), after=self._reply)
                hint = same_reply_hint(self._replaced, msgs[-1], self.session.sampling)
                if hint:
                    await self.log_view.mount(Notice(hint, "info"))
                    self.notify(hint, timeout=8, markup=False)
        self._replaced = None
        if self.tps is not None:
            self.tps_history.append(self.tps)
            self.query_one(Sparkline).data = list(self.tps_history)
        self._stream = self._reply = self._thinking = self._turn = None
        self.generating = False
        self.turns += 1
        self.update_status()
        await self.save()

    async def save(self) -> None:
        if not self.session.messages:
            return
        try:
            saved = self.store.save(self.session.chat)
        except OSError as e:
            await self.show_error(f"could not save the chat: {_describe(e)}")
            return
        if saved.forked_from:  # another window saved this chat meanwhile: both versions are kept
            text = (f"This chat was also changed in another window, so your version was saved as a new chat "
                    f"({saved.path.stem}); the other window's version is kept as it was. Ctrl+O lists both.")
            await self.log_view.mount(Notice(text, "warning"))
            self.log_view.scroll_end(animate=False)
            self.notify(text, severity="warning", timeout=10, markup=False)

    # ------------------------------------------------------------ actions

    MAIN_SCREEN_ACTIONS = {"send", "stop", "regenerate", "edit", "new_chat", "open_chats", "settings",
                           *ReplyActions.ACTIONS, *BranchActions.ACTIONS,
                           *ModelActions.ACTIONS}

    def check_action(self, action: str, parameters) -> Optional[bool]:
        """The chat's keys do nothing while a dialog (saved chats, settings) is open."""
        if action in self.MAIN_SCREEN_ACTIONS and len(self.screen_stack) > 1:
            return False
        return True

    def action_send(self) -> None:
        chat_input = self.query_one(ChatInput)
        chat_input.post_message(ChatInput.Submitted(chat_input.text))

    async def on_chat_input_edit_previous(self, event) -> None:
        await self.action_edit()

    async def on_chat_input_end_of_input(self, event) -> None:
        await self.shut_down()

    async def _idle(self) -> bool:
        if self.loading:
            self.notify(f"{printable(self.loading)} is still loading; wait for it.", severity="warning", markup=False)
            return False
        if self.generating:
            self.notify("A reply is still streaming; Esc stops it.", severity="warning")
            return False
        return True

    async def action_stop(self) -> None:
        if self.generating:
            self.session.stop()
        elif self.editing is not None:
            self.end_edit()

    async def action_regenerate(self) -> None:
        if not await self._idle():
            return
        msgs = self.session.messages
        replaced = dict(msgs[-1]) if msgs and msgs[-1]["role"] == "assistant" else None
        try:
            self.session.drop_last_reply()
        except ValueError as e:
            await self.show_error(str(e))
            return
        self._replaced = replaced
        await self.render_log()
        self.start_reply()

    async def action_edit(self) -> None:
        if not await self._idle():
            return
        users = [i for i, m in enumerate(self.session.messages) if m["role"] == "user"]
        if not users:
            self.notify("No message to edit yet.")
            return
        earlier = [i for i in users if self.editing is None or i < self.editing]
        chat_input = self.query_one(ChatInput)
        if self.editing is None:
            self.draft = chat_input.text
        self.set_editing(earlier[-1] if earlier else users[-1])
        chat_input.text = printable(self.session.messages[self.editing]["content"])
        chat_input.move_cursor(chat_input.document.end)
        chat_input.focus()

    def set_editing(self, index: Optional[int]) -> None:
        """Mark message `index` (None: none) as the one being edited."""
        self.editing = index
        for w in self.log_view.query(".message"):
            w.set_class(index is not None and w.index == index, "editing")
            if index is not None and w.index == index:
                w.scroll_visible(animate=False)
        self.query_one(ChatInput).set_class(index is not None, "editing")
        self.update_status()

    def end_edit(self) -> None:
        """Leave editing (resent or cancelled): the input gets back the draft it held when the edit began."""
        self.set_editing(None)
        chat_input = self.query_one(ChatInput)
        chat_input.text, self.draft = self.draft, ""
        chat_input.move_cursor(chat_input.document.end)

    async def action_new_chat(self) -> None:
        if not await self._idle():
            return
        old = self.session.chat
        self.session.open(Chat(model=old.model, system=old.system, settings=dict(old.settings)))
        if self.editing is not None:  # an unsent draft stays in the input for the new chat
            self.end_edit()
        await self.render_log()

    async def open_chat(self, chat_id: Optional[str]) -> None:
        if not chat_id:
            return
        try:
            chat = self.store.load(chat_id)
        except ValueError as e:
            await self.show_error(str(e))
            return
        self.session.open(chat)
        if self.editing is not None:
            self.end_edit()
        await self.render_log()
        self.notify(f"Opened “{chat.display_title()}”.", markup=False)
        self.warn_other_model()

    def warn_other_model(self) -> None:
        """A chat whose replies came from another model than the one loaded says so when it is opened."""
        made_with = self.session.chat.model
        if made_with and made_with != self.model_name:
            self.notify(f"This chat was made with {printable(made_with)}; {self.model_name} is loaded now and "
                        "writes the next replies.", severity="warning", timeout=10, markup=False)

    async def action_open_chats(self) -> None:
        if await self._idle():
            self.push_screen(ChatListScreen(self.store), self.open_chat)

    async def action_settings(self) -> None:
        if await self._idle():
            self.push_screen(SettingsScreen(self.session.chat.system, self.session.sampling, self.session.thinking),
                             self.apply_settings)

    async def apply_settings(self, result) -> None:
        if result is None:
            return
        system, sampling, thinking = result
        self.session.chat.system = system
        self.session.set_sampling(sampling)
        self.session.set_thinking(thinking)
        await self.render_log()
        await self.save()

    def get_system_commands(self, screen):
        """The command palette (Ctrl+P) offers the chat's own actions first, then Textual's (theme, keys, quit)."""
        if screen is self.screen_stack[0]:
            yield SystemCommand("New chat", "Start a new chat (Ctrl+N)", self.action_new_chat)
            yield SystemCommand("Open a saved chat", "List the saved chats (Ctrl+O)", self.action_open_chats)
            yield SystemCommand("Settings", "System prompt, sampling, thinking (Ctrl+T)", self.action_settings)
            yield SystemCommand("Toggle thinking", "Thinking on or off for this chat's next replies",
                                self.action_toggle_thinking)
            yield SystemCommand("Regenerate", "Answer your last message again (Ctrl+R)", self.action_regenerate)
            yield SystemCommand("Edit last message", "Edit and resend your last message (Ctrl+E)", self.action_edit)
            yield from self.reply_commands()
            yield from self.branch_commands()
            yield from self.model_commands()
        yield from super().get_system_commands(screen)

    async def action_toggle_thinking(self) -> None:
        """Thinking off when it is on or the template's default (on, for the models that have the switch), else on."""
        if not await self._idle():
            return
        on = self.session.thinking is False
        self.session.set_thinking(on)
        self.notify(f"Thinking {'on' if on else 'off'} for the next replies.", markup=False)
        await self.save()

    def get_driver_class(self):
        driver = super().get_driver_class()
        return HangupSafeDriver if driver is HangupSafeDriver.__base__ else driver

    async def action_quit(self) -> None:
        await self.shut_down()

    async def on_gone(self) -> None:
        """The terminal vanished (HangupSafeDriver): leave as Ctrl+Q does."""
        await self.shut_down()

    async def action_interrupt(self) -> None:
        """Ctrl+C as in a shell: it copies a selection, as in any input; otherwise it stops a streaming reply, and
        a second Ctrl+C within INTERRUPT_AGAIN seconds quits. When idle it quits at once, unless the input holds
        text that was never sent (a draft, an edit): then it asks for the second press, since leaving loses it."""
        focused = self.focused
        if getattr(focused, "selected_text", "") and hasattr(focused, "action_copy"):
            focused.action_copy()
            return
        now = time.monotonic()
        unsent = bool(self.query_one(ChatInput).text.strip())
        if now - self._interrupted < INTERRUPT_AGAIN or not (self.generating or unsent):
            await self.shut_down()
            return
        self._interrupted = now
        if self.generating:
            self.session.stop()
        lost = " (the text in the input is not saved)" if unsent else ""
        self.notify(f"Press Ctrl+C again to quit{lost}.", timeout=INTERRUPT_AGAIN, markup=False)

    async def shut_down(self) -> None:
        """The one way out: stop the reply, let the worker finish its MLX work, save what it wrote, exit."""
        if self._leaving:
            return
        self._leaving = True
        self.session.stop()
        worker = self._worker
        if worker is not None and not worker.is_finished:
            try:
                await asyncio.wait_for(asyncio.shield(worker.wait()), QUIT_WAIT)
            except Exception:  # it failed (reported as a crash) or never stopped: leave anyway
                pass
            await self.save()  # the partial reply; the Finished message will not be handled any more
        self.exit()

    async def on_unmount(self) -> None:
        """However the app ends: stop a reply, let the MLX thread finish it and free its MLX state, end the thread
        (bounded: a thread stuck past QUIT_WAIT is left behind)."""
        self.session.stop()
        if self._mlx_used:
            try:
                await asyncio.wait_for(asyncio.wrap_future(self._mlx.submit(_end_mlx_work)), QUIT_WAIT)
            except Exception:  # it failed or never ended; leaving matters more now
                pass
        self._mlx.shutdown(wait=False)

    def _handle_exception(self, error: Exception) -> None:
        """An exception nothing handled (a bug): end the app with status 1 and keep the exception for the CLI to
        report in one line, instead of Textual's screenful of traceback. Saved chats are untouched."""
        if self.crash is None:
            self.crash = error
        self.exit(return_code=1)


def crash_report(error: BaseException) -> str:
    """One line about an exception that ended the app; its traceback goes to crash.log in the data folder."""
    what = f"the chat stopped on an unexpected error ({printable(_describe(error))})"
    log = data_dir() / "crash.log"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(traceback.format_exception(error)), encoding="utf-8")
    except OSError as e:
        return f"{what}; no log could be written ({_describe(e)}); saved chats are intact"
    return f"{what}; details in {log}; saved chats are intact"


def _end_mlx_work() -> None:
    """The last call in a thread that ran MLX: finish its work and free what MLX keeps per thread.

    MLX 0.32 keeps streams and the mx.compile cache per thread, and frees them when the thread ends, which needs
    the GIL: a thread (even an idle pool thread) ending while the interpreter shuts down then aborts the process
    ("terminate called without an active exception"). MLX asks every thread but the main one to call
    mx.clear_streams() itself before it ends (ml-explore/mlx#4327, #4373), and only then: the thread cannot use
    MLX afterwards. Synchronize first so no queued work (the token decoded ahead) still needs those streams."""
    import mlx.core as mx

    mx.synchronize()
    mx.clear_streams()


def _describe(e: BaseException) -> str:
    text = " ".join(str(e).split()) or e.__class__.__name__
    return text if isinstance(e, (ValueError, OSError)) else f"{e.__class__.__name__}: {text}"
