"""Where a chat template's budget (template_budget) is spent: Jinja2's immutable sandbox with every hook it has.

The sandbox's own hooks (attribute and item access, calls, the intercepted operators) tick the clock, check the
arguments of the operations that grow with an argument, and check and charge what they return. Three places Jinja
gives no hook get one here: filters and tests are wrapped; the parsed template is rewritten so every `{% for %}`
walks a _CheckedIter and every list, dict, tuple and `~` literal passes a check (VALUE); and the code generator
gives macros and blocks a _Buffer that counts what they write.
"""

from __future__ import annotations

import functools
import inspect
import json

from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from mlxmodels.template_budget import (
    FILTER_RULES,
    INT_METHODS,
    MAX_INDENT,
    MAX_SIZE,
    TEXT_METHODS,
    BudgetExceeded,
    amount,
    check_format,
    check_power,
    check_printf,
    check_repeat,
    current,
    lipsum_rule,
)


def _with_rule(func, rule, what: str):
    """`func` (a filter or global) whose arguments pass `rule` before it runs and whose result is checked after."""
    signature = inspect.signature(func) if rule is not None else None
    # Jinja passes its context or environment first; some filters' signatures name that argument, others are
    # wrappers (async variants) that take it without naming it: bind the rest then.
    unnamed = int(hasattr(func, "jinja_pass_arg") and not hasattr(inspect.unwrap(func), "jinja_pass_arg"))

    @functools.wraps(func)  # keeps jinja_pass_arg: Jinja still passes the environment or context first
    def guarded(*args, **kwargs):
        budget = current()
        budget.tick()
        if rule is not None:
            bound = signature.bind(*args[unnamed:], **kwargs)
            bound.apply_defaults()
            rule(budget, bound.arguments, what)
            args, kwargs = (*args[:unnamed], *bound.args), bound.kwargs
        return budget.built(func(*args, **kwargs), f"the result of {what}")

    return guarded


def _ticking(test):
    @functools.wraps(test)
    def ticked(*args, **kwargs):
        current().tick()
        return test(*args, **kwargs)

    return ticked


@functools.cache
def _method_signature(owner: type, name: str) -> inspect.Signature:
    return inspect.signature(getattr(owner, name))


def _method_rule(func):
    """(rule, signature, name) when `func` is a bound method of text or a number that needs a rule; else None."""
    name = getattr(func, "__name__", None)
    if name not in TEXT_METHODS and name not in INT_METHODS:
        return None
    owner = getattr(func, "__self__", None)
    for kind, rules in ((str, TEXT_METHODS), (bytes, TEXT_METHODS), (bytearray, TEXT_METHODS), (int, INT_METHODS)):
        if isinstance(owner, kind) and name in rules:  # Markup's methods take str's arguments
            return rules[name], _method_signature(kind, name), f"{kind.__name__}.{name}()"
    return None


class _CheckedIter:
    """What a `{% for %}` loop walks: every step ticks the clock and checks the item (batch lists, say)."""

    def __init__(self, iterable):
        self.iterable = iterable

    def __len__(self):  # a TypeError when the iterable has none: Jinja's loop.length then counts the items
        return len(self.iterable)

    def __iter__(self):
        budget = current()
        for item in self.iterable:
            budget.tick()
            yield budget.check(item, "a loop item")


class _Buffer(list):
    """The output of a macro, `{% set %}` block, call or filter block, counted as it is written: a loop writing
    into one never reaches the render's own output check."""

    def __init__(self):
        super().__init__()
        self.budget, self.chars = current(), 0

    def append(self, text):
        self._grow(len(text))
        super().append(text)

    def extend(self, texts):
        texts = tuple(texts)
        self._grow(sum(map(len, texts)))
        super().extend(texts)

    def _grow(self, n: int) -> None:
        self.budget.tick()
        self.chars += n
        if self.chars > MAX_SIZE:
            raise BudgetExceeded(f"a macro or block wrote more than {MAX_SIZE:,} characters")
        self.budget.charge(n)


class _CodeGenerator(CodeGenerator):
    def buffer(self, frame) -> None:
        super().buffer(frame)
        self.writeline(f"{frame.buffer} = environment.budget_buffer()")


# Filters a template cannot name (a space is not a name), wrapped around nodes by _Budgeted.
ITER, VALUE = "budget iter", "budget value"


class _Budgeted(NodeTransformer):
    """Every `{% for %}` walks its iterable through ITER; every list, dict, tuple and `~` built goes through VALUE
    (built without any call, `[a, a]` nested ten deep prints 2**10 times larger than its source)."""

    def visit_For(self, node):
        node = self.generic_visit(node)
        node.iter = _filter(node.iter, ITER)
        return node

    def _built(self, node):
        return _filter(self.generic_visit(node), VALUE)

    visit_List = visit_Dict = visit_Concat = _built

    def visit_Tuple(self, node):
        return self._built(node) if node.ctx == "load" else self.generic_visit(node)


def _filter(node, name: str):
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


class BudgetedSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, every hook of which also spends from the current render's Budget."""

    intercepted_binops = frozenset({"+", "*", "%", "**"})
    code_generator_class = _CodeGenerator

    def __init__(self, *, filters: dict | None = None, globals: dict | None = None, **options):
        super().__init__(**options)
        self.filters.update(filters or {})
        self.filters = {name: _with_rule(f, FILTER_RULES.get(name), f"the {name} filter")
                        for name, f in self.filters.items()}
        self.filters[ITER] = _CheckedIter
        self.filters[VALUE] = lambda value: current().built(value, "a list, dict or text the template built")
        self.tests = {name: _ticking(test) for name, test in self.tests.items()}
        self.globals.update(globals or {})
        self.globals["lipsum"] = _with_rule(self.globals["lipsum"], lipsum_rule, "lipsum()")

    def _parse(self, source, name, filename):
        tree = _Budgeted().visit(super()._parse(source, name, filename))
        tree.set_environment(self)
        return tree

    def budget_buffer(self) -> _Buffer:
        return _Buffer()

    def getattr(self, obj, attribute):
        current().tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        current().tick()
        return super().getitem(obj, argument)

    def call_binop(self, context, operator, left, right):
        budget = current()
        budget.tick()
        what = f"the {operator} operator"
        if operator == "*":
            check_repeat(budget, left, right, what)
        elif operator == "**":
            check_power(budget, left, right, what)
        elif operator == "%" and isinstance(left, (str, bytes)):
            check_printf(budget, left, right, what)
        return budget.built(super().call_binop(context, operator, left, right), f"the result of {what}")

    def call(__self, __context, __obj, *args, **kwargs):  # the sandbox's spelling: kwargs may say "context"
        budget = current()
        budget.tick()
        found = _method_rule(__obj)
        what = "a call"
        if found is not None:
            rule, signature, what = found
            bound = signature.bind(__obj.__self__, *args, **kwargs)
            bound.apply_defaults()
            rule(budget, bound.arguments, what)
            args, kwargs = bound.args[1:], bound.kwargs
        return budget.built(super().call(__context, __obj, *args, **kwargs), f"the result of {what}")

    def wrap_str_format(self, value):
        """str.format and format_map (the sandbox wraps them on access): their widths are checked first."""
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        fmt, what = value.__self__, f"str.{value.__name__}()"

        @functools.wraps(wrapper)
        def checked(*args, **kwargs):
            budget = current()
            mapping = args[0] if what == "str.format_map()" and args and hasattr(args[0], 'keys') else kwargs
            check_format(budget, fmt, args, mapping, what)
            return budget.built(wrapper(*args, **kwargs), f"the result of {what}")

        return checked


def bounded_json(value, *, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    """json.dumps(value, ...), built chunk by chunk and stopped as soon as it passes MAX_SIZE (json.dumps would
    build it whole first: nested lists shared by reference, an indent repeated on every line)."""
    budget = current()
    for arg in (indent, *(separators or ())):
        width = len(arg) if isinstance(arg, str) else arg if isinstance(arg, int) else 0
        if width > MAX_INDENT:
            raise BudgetExceeded(f"tojson's indent or separators are {amount(width)} wide; at most {MAX_INDENT}")
    encoder = json.JSONEncoder(ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    parts, size = [], 0
    for part in encoder.iterencode(value):  # not one-shot: the pure-Python encoder, which yields as it goes
        size += len(part)
        if size > MAX_SIZE:
            raise BudgetExceeded(f"tojson would build more than {MAX_SIZE:,} characters")
        parts.append(part)
        if len(parts) % 1024 == 0:
            budget.tick()
    return "".join(parts)
