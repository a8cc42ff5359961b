"""A terminal that may vanish under the chat app (its window closed, its ssh connection dropped).

Then SIGHUP arrives and every read or write of the terminal fails (EIO). Textual does not expect that: its writer
thread dies on the first failed write, the next screen update waits forever for room in the writer's queue, and
the app never exits; its input thread reports the failed read as a crash. `HangupSafeDriver` is Textual's Linux
driver, except that a failed write or read means "the terminal is gone": stdout and stderr are pointed at
/dev/null (so the last screen updates, Textual's goodbye sequences and Python's final flush go nowhere instead of
failing) and the app is asked to leave the usual way (`on_gone`, its clean exit).
"""

from __future__ import annotations

import os
import threading
from typing import Callable

from textual.drivers.linux_driver import LinuxDriver


def detach_output() -> None:
    """Point stdout and stderr (the vanished terminal) at /dev/null; stdin stays, its reads fail and end input."""
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        for target in (1, 2):
            try:
                os.dup2(fd, target)
            except OSError:
                pass
    finally:
        os.close(fd)


class _Output:
    """The file Textual's writer thread writes the screen to, with a failed write reported once, not raised."""

    def __init__(self, file, gone: Callable[[], None]):
        self._file, self._gone = file, gone

    def write(self, text: str) -> None:
        try:
            self._file.write(text)
        except (OSError, ValueError):  # EIO: the terminal is gone; ValueError: the file was closed
            self._gone()

    def flush(self) -> None:
        try:
            self._file.flush()
        except (OSError, ValueError):
            self._gone()

    def fileno(self) -> int:
        return self._file.fileno()


class HangupSafeDriver(LinuxDriver):
    """Textual's Linux driver for an app with an `on_gone()` method (called once, from any thread, when the
    terminal has vanished)."""

    def __init__(self, app, **kwargs):
        super().__init__(app, **kwargs)
        self._gone = threading.Event()
        self._file = _Output(self._file, self._terminal_gone)

    def _terminal_gone(self) -> None:
        if not self._gone.is_set():
            self._gone.set()
            detach_output()
            self._app.call_later(self._app.on_gone)

    def run_input_thread(self) -> None:
        try:
            super().run_input_thread()
        except OSError:  # EIO on a read: the terminal is gone
            self._terminal_gone()
