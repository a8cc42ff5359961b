"""Progress bars only on a terminal (sys.stderr.isatty()): a log, a pipe or a test's captured stderr gets the
results and the errors, never a screen of carriage returns. Covers our own bars (convert's) and huggingface_hub's
download bars, which it would draw anywhere."""

from __future__ import annotations

import contextlib
import sys


def on_terminal() -> bool:
    return sys.stderr.isatty()


def byte_bar(total: int, desc: str):
    """A tqdm bar over `total` bytes on stderr, drawn only on a terminal (update and close still work off one)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr, leave=False,
                disable=not on_terminal())


@contextlib.contextmanager
def hub_downloads():
    """While open, huggingface_hub draws its download bars only on a terminal; its own switch is put back after
    (a user's HF_HUB_DISABLE_PROGRESS_BARS is left alone)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    switched = not on_terminal() and not are_progress_bars_disabled()
    if switched:
        disable_progress_bars()
    try:
        yield
    finally:
        if switched:
            enable_progress_bars()
