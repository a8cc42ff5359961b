"""Flag types for every `mlxm` subcommand: each bad value is one clear line (argparse prints it, exit 2).

Kept apart from cli.py so the subcommands' own modules (bench_cmd, convert_cmd) can use them without importing the
entry point that imports them.
"""

from __future__ import annotations

import argparse
import json
import math


def number(kind, text, check, expect):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r} (expected {expect})") from None
    # float() reads "nan" and "inf" (and 1e400 as inf); NaN fails every comparison, so `not check` alone would
    # let some through: neither is a setting
    if (kind is float and not math.isfinite(value)) or not check(value):
        raise argparse.ArgumentTypeError(f"invalid value {text!r} (expected {expect})")
    return value


def positive_int(text):
    return number(int, text, lambda v: v >= 1, "a whole number >= 1")


def non_negative_int(text):
    return number(int, text, lambda v: v >= 0, "a whole number >= 0")


def non_negative_float(text):
    return number(float, text, lambda v: v >= 0, "a number >= 0")


def positive_float(text):
    return number(float, text, lambda v: v > 0, "a number > 0")


def unit_float(text):
    return number(float, text, lambda v: 0 < v <= 1, "a number in (0, 1]")


def min_p_float(text):
    return number(float, text, lambda v: 0 <= v < 1, "a number in [0, 1)")


def penalty_float(text):
    return number(float, text, lambda v: v > 0, "a number > 0")


SEEDS = 2 ** 64  # MLX's random.seed takes an unsigned 64-bit number


def seed_int(text):
    return number(int, text, lambda v: 0 <= v < SEEDS, f"a whole number from 0 to {SEEDS - 1}")


def port_int(text):
    return number(int, text, lambda v: 0 <= v <= 65535, "a port number from 0 to 65535")


def at_least(low: int):
    """A whole number >= low (e.g. `at_least(2)` for a window that must score a token)."""
    return lambda text: number(int, text, lambda v: v >= low, f"a whole number >= {low}")


def template_kwargs_json(text):
    """--template-kwargs: a JSON object of chat template switches, checked as a saved chat's are."""
    from app.chat_store import check_template_kwargs  # here, not at import: the entry point imports this first

    try:
        return check_template_kwargs(json.loads(text))
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; nesting too deep a RecursionError
        what = str(e) if not isinstance(e, (json.JSONDecodeError, RecursionError)) else "not JSON"
        raise argparse.ArgumentTypeError(f"invalid value {text[:80]!r} ({what}; expected a JSON object such as "
                                         '\'{"enable_thinking": false}\')') from None


def non_empty(text):
    """Text that must say something (`--stop ""` would stop nowhere, silently)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty value does nothing here; give some text")
    return text
