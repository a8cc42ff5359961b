"""A kill (SIGTERM) or a closed terminal (SIGHUP) stops a command the way Ctrl-C (SIGINT) does: as a
KeyboardInterrupt, so its `finally` blocks remove what it made and stop what it started before it exits with the
shell's status for that signal (128 + its number: 130, 143, 129).

Used by the commands that leave something behind when cut short: convert (a partial folder) and bench (worker
processes and their log folder).
"""

from __future__ import annotations

import contextlib
import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


_held = 0  # how deep inside held() we are
_pending = None  # the signal that came while held


def _interrupt(signum, frame):
    global _pending
    for s in SIGNALS:  # the first signal stops the run; more must not cut its cleanup short
        signal.signal(s, signal.SIG_IGN)
    if _held:
        _pending = signum
        return
    raise Interrupted(signum)


def catch() -> dict[int, object]:
    """From now on the signals raise Interrupted; -> the handlers they had, for `restore`. A signal ignored when we
    started stays ignored: under nohup a closed terminal must not stop the run."""
    return {s: signal.signal(s, _interrupt) for s in SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}


def restore(previous: dict[int, object]) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler)


@contextlib.contextmanager
def held():
    """A signal that comes inside the block stops the run only when the block ends: for the steps that make
    something and must record it before the signal's cleanup runs (a temporary folder and its name, a child
    process and its handle). Python-level, as the handlers are: blocking the signal itself (pthread_sigmask)
    would hold it for this thread only, and MLX's and OpenBLAS's threads would take it."""
    global _held, _pending
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _pending is not None:
            signum, _pending = _pending, None
            raise Interrupted(signum)  # over any error of the block's: the signal is why the run ends


def signum(e: KeyboardInterrupt) -> int:
    """The signal behind a KeyboardInterrupt: a plain one is Python's own, from SIGINT."""
    return e.signum if isinstance(e, Interrupted) else signal.SIGINT


def name(e: KeyboardInterrupt) -> str:
    return signal.Signals(signum(e)).name


def exit_status(e: KeyboardInterrupt) -> int:
    return 128 + signum(e)  # the shell's convention: 130 for Ctrl-C, 143 for a kill (SIGTERM), 129 for SIGHUP
