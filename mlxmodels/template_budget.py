"""A time and size budget for chat templates, on top of Jinja2's sandbox.

The sandbox keeps a template away from Python's internals; it does not stop one from running for hours or filling
memory: `{{ 'x' * 10**10 }}`, loops of 10**10 steps, `lipsum(10**8)`, lists nested by reference whose printed form
doubles at each level. A template comes from a model folder we do not trust, so each render gets a budget:

- time: TIME_LIMIT_S, checked at every hook the sandbox offers (attribute access, calls, filters, tests, operators),
  at every step of every `{% for %}` loop and at every piece of output, so a loop that emits nothing still stops;
- size: no value the template builds, and not its output, may be larger than MAX_SIZE (characters of text;
  containers count their entries plus their contents as printed, shared references once per reference), no list
  longer than MAX_ENTRIES, and everything built in one render together may not pass MAX_BUILT.

A check can only run between operations, never inside one: an operation whose result size follows from an
argument (a width, a repeat count, a power, a join) is checked *before* it runs; any other result is at most a
small multiple of its inputs, which were checked, and is checked after. Real templates render in milliseconds
and build kilobytes, far inside these limits.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import time
from collections.abc import Mapping
from string import Formatter
from types import MappingProxyType

import jinja2
from jinja2.filters import make_attrgetter
from jinja2.runtime import Namespace

TIME_LIMIT_S = 2.0
MAX_SIZE = 8 << 20  # 8 Mi characters: the output (a prompt of ~2M tokens) and any one value
MAX_ENTRIES = 1 << 20  # entries of one list or dict: sorting or grouping them runs without a check inside
MAX_BUILT = 64 << 20  # characters and entries built by one render, all values together
MAX_COUNT = 100_000  # counts that drive a loop inside one filter (batch, slice, lipsum): Jinja's own cap on range()
MAX_INT_BITS = 1 << 16  # ~20,000 digits; arithmetic on larger numbers takes seconds in one step
MAX_INDENT = 64  # tojson's indent and separators, repeated on every line
MAX_SLOW_INPUT = 1 << 20  # text for the filters that loop in Python without a check (wordwrap, urlize, pprint)
MAX_DIGITS = 4300  # round()'s precision: Python's own limit on the digits of a number as text


class BudgetExceeded(jinja2.TemplateRuntimeError):
    """A template ran out of time or built too much; the message says which."""


# ---------------------------------------------------------------- the budget of one render


class Budget:
    def __init__(self, time_limit: float = TIME_LIMIT_S):
        self.time_limit = time_limit
        self.deadline = time.monotonic() + time_limit
        self.total = 0  # what this render built, in characters and entries
        # id -> (size, value): each container is measured once per render; the immutable sandbox keeps a template
        # from changing lists and dicts, and holding the value keeps its id from being reused
        self._sizes: dict[int, tuple[int, object]] = {}

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise BudgetExceeded(f"it ran past its {self.time_limit:g} s time limit")

    def expect(self, size: int, what: str) -> None:
        """Refuse, before it runs, an operation that would build more than MAX_SIZE characters."""
        if size > MAX_SIZE:
            raise BudgetExceeded(f"{what} would build {amount(size)} characters; a chat template may build at most "
                                 f"{MAX_SIZE:,}")

    def check(self, value, what: str = "a value"):
        """`value` if it is within the size limits (nothing is charged: loop items, values that already exist)."""
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise BudgetExceeded(f"{what} is a number of {value.bit_length():,} bits; the limit is {MAX_INT_BITS:,}")
        if isinstance(value, (list, tuple, dict)) and len(value) > MAX_ENTRIES:
            raise BudgetExceeded(f"{what} has {len(value):,} entries; the limit is {MAX_ENTRIES:,}")
        size = self.size(value)
        if size > MAX_SIZE:
            raise BudgetExceeded(f"{what} is {size:,} characters long as text; the limit is {MAX_SIZE:,}")
        return value

    def built(self, value, what: str = "a value"):
        """`value`, just built by the template: checked, and charged to the render's total."""
        self.tick()
        self.check(value, what)
        self.charge(len(value) if isinstance(value, (str, bytes, list, tuple, dict)) else 1)
        return value

    def charge(self, n: int) -> None:
        self.total += n
        if self.total > MAX_BUILT:
            raise BudgetExceeded(f"it built more than {MAX_BUILT:,} characters in all")

    def size(self, value) -> int:
        """About the length of `value` printed: characters of text, digits of numbers, entries plus contents."""
        if isinstance(value, (str, bytes, bytearray)):
            return len(value)
        if isinstance(value, int):
            return value.bit_length() // 3 + 1
        if isinstance(value, Namespace):  # mutable (`{% set ns.x = ... %}`): measured each time, never cached
            return 1 + self._contents(getattr(value, "_Namespace__attrs", {}))
        if isinstance(value, _DICT_VIEWS):  # a fresh view of a dict: as large as the dict
            return 1 + self._contents(value.mapping)
        if not isinstance(value, (list, tuple, dict, set, frozenset)):
            return 1  # numbers, None, callables, lazy iterators (their items are checked as they are made)
        known = self._sizes.get(id(value))
        if known is not None:
            return known[0]
        self._sizes[id(value)] = (1, value)  # a cycle (only possible in data a caller passed) counts once
        total = 1 + self._contents(value)
        self._sizes[id(value)] = (total, value)
        return total

    def _contents(self, value) -> int:
        if isinstance(value, (dict, MappingProxyType)):
            return sum(2 + self.size(k) + self.size(v) for k, v in value.items())
        return sum(1 + self.size(item) for item in value)


_DICT_VIEWS = (type({}.items()), type({}.keys()), type({}.values()))
_CURRENT: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("chat_template_budget", default=None)


def current() -> Budget:
    budget = _CURRENT.get()
    if budget is None:
        raise RuntimeError("a budgeted template runs only inside template_budget.scope()")
    return budget


@contextlib.contextmanager
def scope(time_limit: float = TIME_LIMIT_S):
    """A fresh budget for what runs inside: one compile, or one render."""
    token = _CURRENT.set(Budget(time_limit))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


def amount(n: int) -> str:
    # f"{n:,}" refuses numbers past 4300 digits, which a template can ask for
    return f"{n:,}" if n < 10**15 else f"about 10^{int(n.bit_length() * 0.30103)}"


def _digits(text) -> int:
    return int(text) if len(text) <= 15 else 10**15


# ---------------------------------------------------------------- checks before an operation runs
# Each rule gets the budget, the call's arguments by parameter name (it may replace one) and what to call it;
# template_sandbox applies them (FILTER_RULES, TEXT_METHODS, INT_METHODS, LIPSUM) and the check_* functions.


def _width(param):
    """center, ljust, rjust, zfill, to_bytes: the result is as wide as asked."""
    def rule(budget, a, what):
        if isinstance(a[param], int):
            budget.expect(a[param], what)
    return rule


def _count(param):
    """batch, slice: the filter loops that many times in Python, where no check can run."""
    def rule(budget, a, what):
        if isinstance(a[param], int) and a[param] > MAX_COUNT:
            raise BudgetExceeded(f"{what} asks for {amount(a[param])}; at most {MAX_COUNT:,}")
    return rule


def _text(value) -> str | bytes:
    return value if isinstance(value, (str, bytes)) else str(value)


def _replace(s_param):
    def rule(budget, a, what):
        s, old, new = _text(a[s_param]), _text(a["old"]), _text(a["new"])
        if type(old) is not type(s) or type(new) is not type(s):
            return  # Python raises its own TypeError
        hits = len(s) + 1 if not old else s.count(old)
        if isinstance(a.get("count"), int) and a["count"] >= 0:
            hits = min(hits, a["count"])
        budget.expect(len(s) + hits * (len(new) - len(old)), what)
    return rule


def _join(items_param, sep_param):
    """str.join and the join filter: the items are gathered first (a map or select runs here, checked item by
    item), then the joined length is known before it is built."""
    def rule(budget, a, what):
        key = items_param or next(k for k in a if k != sep_param)  # bytes.join names it iterable_of_bytes
        items = []
        for item in a[key]:
            budget.tick()
            items.append(item)
        if a.get("attribute") is not None:  # the filter's join(attribute=...): look them up here, as it would
            items = list(map(make_attrgetter(a["eval_ctx"].environment, a["attribute"]), items))
            a["attribute"] = None
        a[key] = items
        sep = budget.size(a[sep_param])
        budget.expect(sum(map(budget.size, items)) + sep * max(len(items) - 1, 0), what)
    return rule


def _expandtabs(budget, a, what):
    s, tabsize = a["self"], a["tabsize"]
    if isinstance(tabsize, int):
        budget.expect(len(s) + s.count("\t" if isinstance(s, str) else b"\t") * tabsize, what)


def _translate(budget, a, what):
    table = a["table"]
    if isinstance(table, Mapping):
        longest = max((len(v) for v in table.values() if isinstance(v, str)), default=1)
        budget.expect(len(a["self"]) * longest, what)


def _indent(budget, a, what):
    s, width = _text(a["s"]), a["width"]
    width = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    budget.expect(len(s) + (s.count("\n") + 1) * width, what)


def _format(budget, a, what):
    check_printf(budget, _text(a["value"]), a["kwargs"] or a["args"], what)


def _sum(budget, a, what):
    if not isinstance(a["start"], (int, float)):  # adding text or lists copies it all at each step
        raise BudgetExceeded(f"{what} adds up numbers only, not {type(a['start']).__name__}")


def _round(budget, a, what):
    if isinstance(a["precision"], int) and abs(a["precision"]) > MAX_DIGITS:
        raise BudgetExceeded(f"{what} asks for {amount(abs(a['precision']))} digits; at most {MAX_DIGITS}")


def _slow(size):
    """Filters that loop in Python, or build an object per word, with no check inside: their input is bounded."""
    def rule(budget, a, what):
        n, factor = size(budget, a)
        if n > MAX_SLOW_INPUT:
            raise BudgetExceeded(f"{what} got {n:,} characters; at most {MAX_SLOW_INPUT:,}")
        budget.expect(n * factor, what)
    return rule


def _wordwrap_size(budget, a):  # every character may start a line
    wrap = a["wrapstring"] if a["wrapstring"] is not None else a["environment"].newline_sequence
    return len(_text(a["s"])), 1 + len(_text(wrap))


def _urlize_size(budget, a):  # every 5 characters may become a link (`a.co `), each with its attributes
    extra = sum(len(_text(a[k])) for k in ("target", "rel") if a[k] is not None)
    return len(_text(a["value"])), 3 + (64 + extra) // 5


def lipsum_rule(budget, a, what):
    n, longest = a["n"], max(a["min"], a["max"]) if isinstance(a["min"], int) and isinstance(a["max"], int) else 0
    if isinstance(n, int):
        _count("n")(budget, a, what)
        budget.expect(n * longest * 16, what)  # words of up to 14 letters, a space, a full stop


_PRINTF = re.compile(r"%%|%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def check_printf(budget, fmt: str | bytes, args, what: str) -> None:
    """'%10000000000d' % 1: printf widths and precisions, written in the format or passed as `*`."""
    if isinstance(fmt, bytes):
        fmt = fmt.decode("latin-1")
    star = False
    for match in _PRINTF.finditer(fmt):
        for n in match.groups():
            star |= n == "*"
            if n and n != "*":
                budget.expect(_digits(n), what)
    if star:
        for value in args if isinstance(args, tuple) else (args,):
            if isinstance(value, int):
                budget.expect(abs(value), what)


def check_format(budget, fmt: str, args, kwargs, what: str) -> None:
    """'{:10000000000}'.format(1): widths in str.format specs, written there or filled in from the arguments."""
    nested = False
    for _, _, spec, _ in Formatter().parse(fmt):
        if spec:
            nested |= "{" in spec
            for n in re.findall(r"\d+", spec):
                budget.expect(_digits(n), what)
    if nested:
        for value in (*args, *kwargs.values()):
            for n in [abs(value)] if isinstance(value, int) else map(_digits, re.findall(r"\d+", _text(value))):
                budget.expect(n, what)


def check_repeat(budget, left, right, what: str) -> None:
    """`'x' * n`, `[x] * n`, and products of numbers."""
    for seq, n in ((left, right), (right, left)):
        if isinstance(n, int) and isinstance(seq, (str, bytes, list, tuple)):
            budget.expect(max(n, 0) * budget.size(seq), what)
            return
    if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
        raise BudgetExceeded(f"{what} would build a number of over {MAX_INT_BITS:,} bits")


def check_power(budget, left, right, what: str) -> None:
    if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1 \
            and left.bit_length() * right > MAX_INT_BITS:
        raise BudgetExceeded(f"{what} would build a number of {amount(left.bit_length() * right)} bits; "
                                 f"at most {MAX_INT_BITS:,}")


FILTER_RULES = {
    "center": _width("width"), "indent": _indent, "format": _format, "join": _join("value", "d"),
    "replace": _replace("s"), "sum": _sum, "batch": _count("linecount"), "slice": _count("slices"),
    "round": _round, "wordwrap": _slow(_wordwrap_size), "urlize": _slow(_urlize_size),
    "pprint": _slow(lambda budget, a: (budget.size(a["value"]), 4)),
    "urlencode": _slow(lambda budget, a: (budget.size(a["value"]), 9)),  # %XX for each byte of UTF-8
    "striptags": _slow(lambda budget, a: (budget.size(a["value"]), 1)),
    "wordcount": _slow(lambda budget, a: (budget.size(a["s"]), 1)),
}
# Methods of text and numbers whose result grows with an argument; the others return at most about their input.
TEXT_METHODS = {
    "center": _width("width"), "ljust": _width("width"), "rjust": _width("width"), "zfill": _width("width"),
    "expandtabs": _expandtabs, "replace": _replace("self"), "join": _join(None, "self"), "translate": _translate,
}
INT_METHODS = {"to_bytes": _width("length")}
