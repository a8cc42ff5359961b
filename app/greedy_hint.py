"""Why a regenerated reply came out the same, and what to change to get another one.

Greedy sampling (temperature 0) always picks the likeliest token, and a fixed seed draws the same "random" tokens:
either way regenerating repeats the reply word for word, which looks like the key did nothing.
"""

from __future__ import annotations

from typing import Optional

from app.chat_store import Sampling


def same_reply_hint(before: Optional[dict], after: Optional[dict], sampling: Sampling) -> str:
    """The notice for a regenerated reply (`after`) equal to the one it replaced (`before`); "" when they differ,
    when either is missing or was stopped (a cut reply says nothing about the sampling), or when the sampling
    is random (then an equal reply is a short answer that came out the same by chance)."""
    if not before or not after or before.get("stopped") or after.get("stopped"):
        return ""
    same = all(before.get(k, "") == after.get(k, "") for k in ("content", "reasoning_content"))
    if not same:
        return ""
    if sampling.temperature == 0:
        return ("Same reply as before: sampling is greedy (temperature 0), so regenerating repeats it. "
                "Raise the temperature in Settings (Ctrl+T) to get a different one.")
    if sampling.seed is not None:
        return (f"Same reply as before: the seed is fixed ({sampling.seed}), so regenerating repeats it. "
                "Clear the seed in Settings (Ctrl+T) to get a different one.")
    return ""
