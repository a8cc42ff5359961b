"""What a reply cost, as `ollama run --verbose` tells it: kept with the reply, shown under it on demand.

A reply's stats come from the last response of its stream (mlxmodels.GenerationResponse) and are saved in the
assistant message as `"stats"` (STATS_KEYS), so they survive saving and reopening. `prompt_tokens` counts the
tokens this turn fed: the ones the cache already held (an earlier turn's prefix) cost nothing and are not counted.
"""

from __future__ import annotations

import math
from typing import Optional

STATS_KEYS = ("prompt_tokens", "prompt_tps", "generation_tokens", "generation_tps", "ttft")


def stats_of(response) -> dict:
    """The stats of a finished (or stopped) reply from its stream's last response."""
    return {"prompt_tokens": int(response.prompt_tokens), "prompt_tps": round(float(response.prompt_tps), 2),
            "generation_tokens": int(response.generation_tokens),
            "generation_tps": round(float(response.generation_tps), 2),
            "ttft": round(float(response.time_to_first_token), 4)}


def stats_line(stats: Optional[dict]) -> str:
    """One line under a reply: its tokens and speed, the prompt's tokens and speed, the time to its first token;
    "" for a reply without stats (one saved before they were kept) or with stats not as we write them (chat files
    are untrusted: chat_store checks them, and this line never fails on what it missed)."""
    numbers = [stats.get(k) for k in STATS_KEYS] if isinstance(stats, dict) else []
    if len(numbers) != len(STATS_KEYS) or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
        return ""
    n, p = stats["generation_tokens"], stats["prompt_tokens"]
    return (f"{n:,} token{'s' * (n != 1)} at {stats['generation_tps']:.1f} tok/s · "
            f"prompt {p:,} token{'s' * (p != 1)} at {stats['prompt_tps']:.1f} tok/s · "
            f"first token after {stats['ttft']:.2f} s")


def progress_text(done: int, total: int) -> str:
    """A long prompt advancing, shown in the reply's placeholder until the first token."""
    return f"prompt {done:,} / {total:,} tokens"
