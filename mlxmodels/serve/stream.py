"""One request's events as the engine thread produces them, read by a blocking iterator or by asyncio.

The engine thread calls `_put`; a reader on another thread blocks on a queue, an asyncio reader gets the events
through its loop's call_soon_threadsafe, so the event loop never waits on the engine. Events that arrive before
an asyncio reader attaches are handed to it when it does.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterator, List, Optional, Tuple


@dataclass
class Event:
    token: int  # -1 on a final event without a token
    logprob: Optional[float] = None
    top_logprobs: Optional[List[Tuple[int, float]]] = None
    finish_reason: Optional[str] = None  # None | "stop" | "length" | "cancelled" | "error"
    error: Optional[str] = None


class Stream:
    def __init__(self, uid: int, prompt_tokens: int, on_cancel: Callable[["Stream"], None]):
        self.uid, self.prompt_tokens = uid, prompt_tokens
        self.cached_tokens = 0  # prompt tokens found in the prefix cache, set when admitted (before its 1st event)
        self._on_cancel = on_cancel
        self._lock = threading.Lock()
        self._pending: "queue.SimpleQueue[Event]" = queue.SimpleQueue()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._async: Optional[asyncio.Queue] = None
        self.finished = False  # its final event was produced

    def _put(self, event: Event) -> None:
        """Called by the engine thread; nothing after a final event."""
        with self._lock:
            if self.finished:
                return
            self.finished = event.finish_reason is not None
            if self._loop is None:
                self._pending.put(event)
                return
            try:
                self._loop.call_soon_threadsafe(self._async.put_nowait, event)
            except RuntimeError:  # the reader's loop is closed: nobody is listening any more
                pass

    def cancel(self) -> None:
        """Thread-safe: the engine frees the request at its next step and ends the stream with "cancelled"."""
        if not self.finished:
            self._on_cancel(self)

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self._pending.get()
            yield event
            if event.finish_reason is not None:
                return

    async def __aiter__(self) -> AsyncIterator[Event]:
        with self._lock:
            self._loop, self._async = asyncio.get_running_loop(), asyncio.Queue()
            while not self._pending.empty():
                self._async.put_nowait(self._pending.get_nowait())
        while True:
            event = await self._async.get()
            yield event
            if event.finish_reason is not None:
                return
