"""A program in a pseudo-terminal (Textual needs one), driven with keys and signals; every wait is bounded."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from typing import List, Optional

# Colours, cursor moves and other control sequences: removed so tests can look for plain words on the screen.
_CONTROL = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[P_^][^\x1b]*\x1b\\|\x1b.")

CTRL_C, CTRL_Q = "\x03", "\x11"


def _take_terminal() -> None:
    """In the child (a session leader): make the pseudo-terminal its controlling terminal, so that closing it
    sends SIGHUP, as closing a terminal window does."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """`command` on a 120x40 pseudo-terminal; all it writes (stdout and stderr alike) is kept in `raw`."""

    def __init__(self, command: List[str], env: dict, cwd: Optional[str] = None):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        try:
            self.proc = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
                                         start_new_session=True, preexec_fn=_take_terminal)
        finally:
            os.close(slave)
        self.master: Optional[int] = master
        self.raw = b""

    def __enter__(self) -> "Terminal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def screen(self) -> str:
        """Everything written so far as plain text (control sequences removed)."""
        return _CONTROL.sub(b"", self.raw).decode("utf-8", "replace")

    def _read(self, timeout: float) -> Optional[bytes]:
        """What arrives within `timeout` (None: nothing yet; b"": the terminal is closed or the program gone)."""
        if self.master is None:
            time.sleep(timeout)
            return b""
        if not select.select([self.master], [], [], timeout)[0]:
            return None
        try:
            chunk = os.read(self.master, 1 << 16)
        except OSError:  # EIO: every process holding the terminal has ended
            chunk = b""
        self.raw += chunk
        return chunk

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            if time.monotonic() > deadline or self._read(0.05) == b"":
                raise AssertionError(f"{text!r} never appeared; the screen:\n{self.screen[-3000:]}")

    def keys(self, data: str) -> None:
        os.write(self.master, data.encode())

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def hang_up(self) -> None:
        """Close the terminal, as closing its window does: the program gets SIGHUP and can no longer write."""
        os.close(self.master)
        self.master = None

    def wait(self, timeout: float = 30.0) -> int:
        """The exit status (negative: the signal that killed it), having read all the output."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"still running after {timeout}s; the screen:\n{self.screen[-3000:]}")
            self._read(0.05)
        while self._read(0.05):  # the rest of the output, until nothing more comes
            pass
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.master is not None:
            os.close(self.master)
            self.master = None
