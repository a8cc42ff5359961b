"""Byte sizes as people read them: B, KB, MB, GB or TB, whichever keeps three significant digits (never "0.00 GB").

Decimal units (1 KB = 1000 B, 1 GB = 10^9 B), as macOS's Finder, Hugging Face and disk makers count, so a size
printed here matches the one a user sees there. The only binary size in the app is an input: convert's
--shard-size, in GiB as mlx-lm's flag is.
"""

from __future__ import annotations

from typing import Tuple

UNITS = ("B", "KB", "MB", "GB", "TB")


def unit_for(n: float) -> Tuple[float, str]:
    """-> (bytes per unit, unit name) for printing `n` bytes: the largest unit in which it is at least 1, moving
    up where three significant digits would round to 1000 (999.7 KB prints as 1.00 MB, not 1000 KB)."""
    i = 0
    while i + 1 < len(UNITS) and abs(n) >= 999.5 * 1000 ** i:
        i += 1
    return float(1000 ** i), UNITS[i]


def digits(value: float, unit: str) -> int:
    """Decimals that give three significant digits (whole bytes have none)."""
    if unit == "B":
        return 0
    return 2 if abs(value) < 9.995 else 1 if abs(value) < 99.95 else 0


def human_bytes(n: float) -> str:
    """1234567 -> '1.23 MB'; 512 -> '512 B'; 0 -> '0 B'."""
    scale, unit = unit_for(n)
    value = n / scale
    return f"{value:.{digits(value, unit)}f} {unit}"
