"""Switching the model inside the chat, mixed into ChatApp: a dialog offers the models `mlxm ls` knows
(app.models_cmd) and takes a typed one (a folder, Hub id, GGUF file or ollama:NAME); the model loads in the app's
MLX thread while the status bar says so and sending waits; then the session takes it (its cache starts over, the
old model is released), the context limit becomes the new model's maximum, and the chat records the model. A load
that fails is one notice, and the old model stays. The key is in ChatApp.BINDINGS, the palette entry in
`model_commands`."""

from __future__ import annotations

import asyncio
import gc
from dataclasses import dataclass
from typing import List, Optional

from textual import work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from app.chat_store import printable


@dataclass
class Loaded:
    model: object
    tokenizer: object
    name: str
    context_limit: int


def load_model(arg: str, dtype: Optional[str] = None, context: Optional[int] = None) -> Loaded:
    """Load `arg` as `mlxm chat -m` does (in the MLX thread), with the chat's --dtype and its --context where the
    new model holds that much (else the model's full context: the limit was asked of another model)."""
    from app import model_arg

    model, tokenizer, folder = model_arg.load(arg, dtype)
    limit = model_arg.context_limit(folder, None)
    return Loaded(model, tokenizer, model_arg.display_name(arg), min(limit, context) if context else limit)


def known_models() -> List[str]:
    """What `mlxm ls` lists (names it can load), none when the cache cannot be read."""
    from app.models_cmd import all_models

    try:
        return [m.name for m in all_models()]
    except Exception:  # an unreadable cache or list must not keep the dialog from opening: typing still works
        return []


class ModelPickerScreen(ModalScreen[Optional[str]]):
    """Pick a known model (Enter) or type one (Enter in the field). Esc closes. Returns what to load."""

    DEFAULT_CSS = "ModelPickerScreen #models { height: auto; max-height: 10; }"
    BINDINGS = [Binding("escape", "close", "Close")]

    def __init__(self, names: List[str], current: str):
        super().__init__()
        self.names, self.current = names, current

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog"):  # a short terminal scrolls it
            yield Label(f"Switch model (now: {printable(self.current)})", classes="title")
            yield OptionList(*[Option(printable(n), id=str(i)) for i, n in enumerate(self.names)], id="models",
                             markup=False)
            yield Input(placeholder="or a folder, Hub id, GGUF file or ollama:NAME", id="model", compact=True)
            yield Static("Enter loads it · Tab moves · Esc closes" if self.names else
                         "No models known yet (mlxm ls): type one · Enter loads it · Esc closes", classes="hint")

    def on_mount(self) -> None:
        (self.query_one(OptionList) if self.names else self.query_one(Input)).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.names[int(event.option.id)])

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(event.value.strip())

    def action_close(self) -> None:
        self.dismiss(None)


class ModelActions:
    ACTIONS = {"switch_model"}  # the main screen's only
    model_loader = staticmethod(load_model)  # (name, **load_options) -> Loaded; tests give their own
    load_options: dict = {}  # mlxm chat's --dtype and --context, kept for the models switched to
    loading: Optional[str] = None  # the model being loaded, while it is

    def model_commands(self):
        yield SystemCommand("Switch model", "Load another model for this chat (F5)", self.action_switch_model)

    async def action_switch_model(self) -> None:
        if await self._idle():
            self.push_screen(ModelPickerScreen(known_models(), self.model_name), self.switch_model)

    async def switch_model(self, name: Optional[str]) -> None:
        if not name or not await self._idle():
            return
        self.generating = True  # sending, regenerating and opening wait while it loads
        self.loading = name
        self.update_status(f"loading {printable(name)} …")
        self.notify(f"Loading {printable(name)} …", markup=False)
        self._load(name)

    @work(exclusive=True, group="model")
    async def _load(self, name: str) -> None:
        """Load in the MLX thread while the app goes on drawing; then the session takes the model."""
        self._mlx_used = True
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(self._mlx, self._load_in_mlx_thread, name)
        except Exception as e:  # a missing folder, a bad id, no network, an unknown architecture: the old one stays
            self.generating, self.loading = False, None
            self.update_status()
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]  # one line, whatever the loader said
            self.notify(f"Could not load {printable(name)}: {printable(why)}; {self.model_name} stays.",
                        severity="error", timeout=10, markup=False)
            return
        self.model_name = loaded.name
        self.session.chat.model = loaded.name
        self.generating, self.loading = False, None
        await self.render_log()
        self.update_status()
        self.notify(f"Switched to {printable(loaded.name)} ({loaded.context_limit:,} tokens of context).",
                    markup=False)

    def _load_in_mlx_thread(self, name: str) -> Loaded:
        import mlx.core as mx

        loaded = self.model_loader(name, **self.load_options)
        self.session.use_model(loaded.model, loaded.tokenizer, loaded.context_limit)
        gc.collect()  # the old model's last references went with the session's: free its memory now
        mx.clear_cache()
        return loaded
