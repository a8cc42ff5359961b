"""Helpers to drive the chat app with Textual's Pilot."""

from __future__ import annotations

import asyncio
import time

from app.chat_session import Sampling
from app.chat_store import Chat, ChatStore
from app.tui import ChatApp

SIZE = (100, 32)


class FixedMeter:
    def memory_gb(self) -> float:
        return 0.0


class SlowModel:
    """The tiny model, `delay` seconds per forward pass: replies last long enough to be stopped."""

    def __init__(self, model, delay: float = 0.02):
        self.model, self.delay = model, delay

    def __call__(self, *args, **kwargs):
        time.sleep(self.delay)
        return self.model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


class ScriptedModel(SlowModel):
    """The tiny model made to reply `text` (then EOS) to any prompt: each call still runs the real model (so the
    cache stays true), but its logits pick the script's next token. A call whose input is the token it last picked
    is a decoding step; any other input is a new prompt and restarts the script (so the script must not begin with
    the prompt's last token)."""

    def __init__(self, tiny, text: str, delay: float = 0.0):
        super().__init__(tiny[0], delay)
        tokenizer = tiny[1]
        self.script = tokenizer.encode(text, add_special_tokens=False) + [min(tokenizer.eos_token_ids)]
        self.k, self.picked = 0, None

    def __call__(self, x, cache=None):
        import mlx.core as mx

        logits = super().__call__(x, cache=cache)
        step = x.size == 1 and x.reshape(-1).tolist() == [self.picked]
        self.k = min(self.k + 1, len(self.script) - 1) if step else 0
        self.picked = self.script[self.k]
        return mx.where(mx.arange(logits.shape[-1]) == self.picked, 0.0, -1e9) + mx.zeros_like(logits)


def make_app(tiny, limit=256, max_tokens=24, chat=None, model=None, **sampling):
    model = model if model is not None else tiny[0]
    chat = chat or Chat(model="tiny", settings=Sampling(max_tokens=max_tokens, **sampling).to_dict())
    return ChatApp(model, tiny[1], "tiny", limit, ChatStore(), chat, meter=FixedMeter())


def run(scenario):
    """Run an async scenario(app, pilot) for a sync test."""
    asyncio.run(scenario)


async def until(pilot, condition, timeout: float = 20.0):
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.02)


async def type_text(pilot, text: str):
    """Real key presses: one per character, Ctrl+J for a new line."""
    keys = []
    for ch in text:
        keys.append({" ": "space", "\n": "ctrl+j"}.get(ch, ch))
    await pilot.press(*keys)


async def send(pilot, text: str):
    app = pilot.app
    before = app.turns
    await type_text(pilot, text)
    await pilot.press("enter")
    await until(pilot, lambda: app.turns > before and not app.generating)
    await pilot.pause()
