"""How much each rank may hold, and whether its share fits, decided before a byte of weights is read.

A rank that runs out of memory mid-load takes the others down with it at an arbitrary point (or swaps for
minutes); checking the placed bytes from the headers first turns that into one line on rank 0. Every rank takes
part in the same all_gathers, so every rank raises the same ParallelError and they all stop together.
"""

import os
from fractions import Fraction
from typing import Optional

import mlx.core as mx
import numpy as np

from .layout import Layout, ParallelError

ENV = "MLXM_RANK_MEMORY"  # bytes this rank may hold (a plain number, or with KB/MB/GB/TB): overrides what MLX says
UNITS = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12}


def rank_memory(environ=os.environ) -> int:
    """Bytes this process may hold: $MLXM_RANK_MEMORY, else what Metal recommends for one working set (a Mac
    keeps the rest for the OS), else the machine's physical memory (the CPU backend)."""
    text = environ.get(ENV, "").strip()
    if text:
        return parse_bytes(text)
    info = mx.device_info()
    for key in ("max_recommended_working_set_size", "memory_size"):
        if info.get(key):
            return int(info[key])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_bytes(text: str) -> int:
    number = text.rstrip("BKMGTbkmgt ")
    unit = text[len(number):].strip().upper()
    unit = unit if unit.endswith("B") or not unit else unit + "B"
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in UNITS or not value > 0:
        # ValueError, not ParallelError: only this rank sees its own environment, so it must say so itself
        raise ValueError(f"{ENV}={text!r} is not a size; give bytes such as 64GB or 68719476736")
    return int(value * UNITS[unit])


def gather(group, value: int) -> list:
    """Every rank's `value` (a byte count), in rank order, on every rank."""
    mine = mx.array([[value]], dtype=mx.int64)  # (1, 1)
    return [int(v) for v in np.array(mx.distributed.all_gather(mine, group=group)).reshape(-1)]


def rank_budgets(group) -> list:
    """Bytes each rank may hold, in rank order (the same list on every rank)."""
    return gather(group, rank_memory())


def share_bytes(layout: Layout, mapped: dict) -> int:
    """Bytes of the whole model's tensors (`mapped`: model-space name -> array or placeholder) this rank holds, as
    stored (a 16-bit checkpoint computed in float32 on the CPU backend holds twice this)."""
    total = 0
    for name, a in mapped.items():
        placement = layout.place(name, tuple(a.shape))
        if placement is not None:
            cut = placement[1]
            total += int(a.nbytes * (Fraction(1) if cut is None else cut.stop - cut.start))
    return total


def model_bytes(mapped: dict) -> int:
    return sum(int(a.nbytes) for a in mapped.values())


def check_share(layout: Layout, mapped: dict, budgets: list) -> None:
    """Every rank's share against its budget; all raise the same ParallelError when one does not fit."""
    shares = gather(layout.group, share_bytes(layout, mapped))
    short = [r for r, (s, b) in enumerate(zip(shares, budgets)) if s > b]
    if short:
        r = short[0]
        raise ParallelError(f"rank {r} needs {human_bytes(shares[r])} for its share of the model in --parallel "
                            f"{layout.name or type(layout).__name__} but may hold {human_bytes(budgets[r])}; use more ranks, "
                            "another --parallel mode, or a more quantized model")


def human_bytes(n: int) -> str:
    """Decimal units, as `mlxm info` and Finder count (1 GB = 10^9 B)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def fits(total: int, budgets: Optional[list], size: int) -> bool:
    """Equal shares of `total` bytes fit every rank (unknown budgets: assume they do)."""
    return budgets is None or total <= size * min(budgets)
