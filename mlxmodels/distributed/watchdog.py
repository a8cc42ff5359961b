"""A bounded wait for the other ranks: a rank that is lost (a Mac asleep, a cable pulled, a process stopped) leaves
the others blocked in a collective that never returns, since its socket stays open. The watchdog is a thread
(MLX releases the GIL while it waits on the ring) that gives up after `timeout` seconds without progress and stops
this process with one line; a rank that dies outright is seen by the ring itself (its socket closes) and by
mlx.launch, which stops the rest.
"""

import os
import sys
import threading
import time
from typing import Callable, Optional

ENV = "MLXM_PARALLEL_TIMEOUT"
DEFAULT_TIMEOUT = 120.0  # seconds without a token or prompt chunk; a prompt chunk of a 671B model takes a few


def timeout_from_env(environ=os.environ) -> float:
    text = environ.get(ENV, "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{ENV}={text!r} is not a number of seconds > 0")
    return value


class Watchdog:
    """`arm()` starts counting, `pet()` marks progress, `disarm()` stops counting (while waiting on a person).
    `on_timeout()` runs on the watchdog's thread once `timeout` seconds pass armed without a pet."""

    def __init__(self, timeout: float, on_timeout: Callable[[], None], clock: Callable[[], float] = time.monotonic):
        self.timeout, self.on_timeout, self.clock = timeout, on_timeout, clock
        self._last: Optional[float] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def arm(self) -> None:
        self.pet()
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="mlxm-watchdog", daemon=True)
            self._thread.start()

    def pet(self, *_) -> None:  # *_: also usable as a prefill progress callback (done, total)
        self._last = self.clock()

    def disarm(self) -> None:
        self._last = None

    def close(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(min(self.timeout / 4, 1.0)):
            last = self._last
            if last is not None and self.clock() - last > self.timeout:
                self.on_timeout()
                return


def exit_with(line: str, stream=None) -> None:
    """The watchdog's end: one line, then leave at once (the main thread is stuck in a collective that Python
    cannot interrupt, so a normal exit would wait on it forever)."""
    stream = stream or sys.stderr
    try:
        stream.write(line + "\n")
        stream.flush()
    finally:
        os._exit(1)
