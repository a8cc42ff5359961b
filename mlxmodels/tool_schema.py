"""A Python function as the JSON schema of a tool, the schema transformers' get_json_schema writes for it.

transformers' apply_chat_template accepts functions in `tools` and describes each one to the template as
{"type": "function", "function": {"name", "description", "parameters", ["return"]}}, built from:

- the type hints: int/float/str/bool/None/Any, list/tuple/dict (typed or bare), Union and `X | None` (None becomes
  "nullable": true; plain types merge into a sorted "type" list, anything richer into "anyOf"), Literal and Enum
  classes ("enum", typed by the JSON types of the values); a parameter without a default is "required";
  `self`/`cls` without a hint is skipped; a return hint that cannot be described is left out, not an error;
- the Google-style docstring: the text before the first "Args:", "Returns:" or "Raises:" is the description, each
  parameter needs a line in the "Args:" block ("name: text" or "name (type): text", continued on following lines), a
  trailing "(choices: [JSON list])" becomes the parameter's "enum", and a "Returns:" block describes the return.

This module builds the same schema (tests/test_tool_schema.py compares it with transformers' on many functions)
without importing transformers, and turns every case transformers refuses into one ToolSchemaInvalid that names the
function and what it lacks.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import sys
import types
import typing
from typing import Any

# The sections of a Google-style docstring, as transformers finds them. The description ends at the first section
# marker anywhere in the text; "Args:" and "Returns:" open a block only on a line of their own.
SECTION_MARKER = re.compile(r"Args:|Returns:|Raises:")
ARGS_HEADER = re.compile(r"\n\s*Args:\n")
ARGS_END = re.compile(r"Returns:|Raises:")
RETURNS_HEADER = re.compile(r"\n\s*Returns:\n")
RETURNS_END = re.compile(r"Raises:")
# A line that opens a parameter's entry: indentation, name, an optional "(type)", a colon
ENTRY = re.compile(r"([ \t]*)(\w+)(?:[ \t]*\([^()\n]*\))?:")
CHOICES = re.compile(r"\(choices:\s*(.*?)\)\s*$", re.IGNORECASE)
LINE_BREAK = re.compile(r"\s*\n+\s*")

SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}  # what "enum" holds
PLAIN = {**{t: {"type": name} for t, name in SCALARS.items()},
         list: {"type": "array"}, tuple: {"type": "array"}, dict: {"type": "object"}, Any: {}}


class ToolSchemaInvalid(ValueError):
    """A function whose type hints or docstring cannot describe it as a tool; the message says which and why."""


class _Unsupported(Exception):
    """A type hint with no JSON schema (the function's name is added by whoever catches it)."""


def is_tool_function(tool) -> bool:
    """What transformers converts: a plain function or a bound method (not a builtin, class, partial or object)."""
    return inspect.isfunction(tool) or inspect.ismethod(tool)


def function_schema(func) -> dict:
    """{"type": "function", "function": {...}} for `func`, exactly as transformers.utils.get_json_schema builds it."""
    name = getattr(func, "__name__", "operation")
    doc = inspect.getdoc(func)
    if not doc:
        raise ToolSchemaInvalid(f"tool function {name!r} has no docstring: a tool needs one saying what it does, with "
                                f"an 'Args:' line for each parameter")
    description, arg_docs, returns_doc = parse_docstring(doc.strip())
    parameters, return_schema = _parameters(func, name)
    for arg, schema in parameters["properties"].items():
        if arg not in arg_docs:
            raise ToolSchemaInvalid(f"tool function {name!r}: its docstring's 'Args:' block has no description for "
                                    f"the parameter {arg!r}")
        text = arg_docs[arg]
        choices = CHOICES.search(text)
        if choices:
            try:
                values = json.loads(choices.group(1))
            except ValueError:
                raise ToolSchemaInvalid(f"tool function {name!r}: the (choices: ...) of parameter {arg!r} is not "
                                        f"JSON: {choices.group(1)!r}") from None
            if not isinstance(values, list):
                raise ToolSchemaInvalid(f"tool function {name!r}: the (choices: ...) of parameter {arg!r} must be a "
                                        f"JSON list, like [\"a\", \"b\"], not {choices.group(1)!r}")
            schema["enum"] = [v.strip() if isinstance(v, str) else v for v in values]
            text = text[: choices.start()].strip()
        schema["description"] = text
    function = {"name": name, "description": description, "parameters": parameters}
    if return_schema is not None:
        if returns_doc is not None:
            return_schema["description"] = returns_doc
        function["return"] = return_schema
    return {"type": "function", "function": function}


def parse_docstring(doc: str) -> tuple[str, dict[str, str], str | None]:
    """(description, {parameter: description}, the Returns block or None) of a cleaned Google-style docstring."""
    marker = SECTION_MARKER.search(doc)
    description = doc[: marker.start() if marker else len(doc)].strip()
    arg_docs = {}
    header = ARGS_HEADER.search(doc)
    if header:
        end = ARGS_END.search(doc, header.end())
        block = doc[header.end() : end.start() if end else len(doc)].rstrip()
        arg_docs = _arg_entries([line for line in block.split("\n") if line.strip()])
    returns = None
    header = RETURNS_HEADER.search(doc)
    if header:
        end = RETURNS_END.search(doc, header.end())
        returns = doc[header.end() : end.start() if end else len(doc)].strip()
    return description, arg_docs, returns


def _arg_entries(lines: list[str]) -> dict[str, str]:
    """The Args block's entries. An entry runs until the next entry line that is not indented deeper than it (deeper
    ones are part of its text); an entry with nothing after its colon takes the next line, whatever it is, as its
    text; lines before the first entry belong to none. A name given twice keeps its last entry."""
    entries = {}
    i = 0
    while i < len(lines):
        entry = ENTRY.match(lines[i])
        if not entry:
            i += 1
            continue
        indent, name = entry.group(1), entry.group(2)
        text = [lines[i][entry.end() :]]
        i += 1
        if not text[0].strip() and i < len(lines):
            text.append(lines[i])
            i += 1
        while i < len(lines) and not (ENTRY.match(lines[i]) and not lines[i].startswith((indent + " ", indent + "\t"))):
            text.append(lines[i])
            i += 1
        entries[name] = LINE_BREAK.sub(" ", "\n".join(text).strip())
    return entries


def _parameters(func, name: str) -> tuple[dict, dict | None]:
    """The "parameters" object (descriptions still to add) and the return's schema (None: no usable return hint)."""
    try:
        hints = typing.get_type_hints(func)
    except Exception as e:  # noqa: BLE001  (an unknown forward reference, an invalid annotation: all one refusal)
        raise ToolSchemaInvalid(f"tool function {name!r}: its type hints cannot be resolved "
                                f"({type(e).__name__}: {e})") from None
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError) as e:
        raise ToolSchemaInvalid(f"tool function {name!r}: no signature ({e})") from None
    params = signature.parameters
    first = next(iter(params), None)
    receiver = first if first in ("self", "cls") and params[first].annotation is inspect.Parameter.empty else None
    required = []
    for param in params.values():
        if param.name == receiver:
            continue
        if param.annotation is inspect.Parameter.empty:
            raise ToolSchemaInvalid(f"tool function {name!r}: the parameter {param.name!r} has no type hint")
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
    properties, return_schema = {}, None
    for arg, hint in hints.items():
        if arg == receiver:
            continue
        if arg == "return":
            try:
                return_schema = hint_schema(hint)
            except _Unsupported:
                pass  # the model never writes the return value: leave it out rather than fail
            continue
        try:
            properties[arg] = hint_schema(hint)
        except _Unsupported as e:
            raise ToolSchemaInvalid(f"tool function {name!r}: the type hint of parameter {arg!r} {e}") from None
    parameters = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return parameters, return_schema


def hint_schema(hint) -> dict:
    """The JSON schema of one type hint (a new dict each call); _Unsupported where there is none."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is None:
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return _enum([member.value for member in hint], f"the Enum {hint.__name__}")
        schema = _plain_type(hint)
        if schema is None:
            raise _Unsupported(f"{hint!r} has no JSON schema: use int, float, str, bool, Enum classes, Literal, and "
                               f"list, tuple, dict and Union of those, or pass a JSON schema dict instead")
        return schema
    if origin is typing.Union or origin is types.UnionType:
        options = [hint_schema(t) for t in args if t is not type(None)]
        if len(options) == 1:
            schema = options[0]
        elif all(o.keys() == {"type"} and isinstance(o["type"], str) for o in options):
            names = sorted({o["type"] for o in options})
            schema = {"type": names[0] if len(names) == 1 else names}
        else:
            schema = {"anyOf": options}
        if type(None) in args:
            schema["nullable"] = True
        return schema
    if origin is typing.Literal and args:
        return _enum(list(args), "a Literal")
    if origin is list:
        return {"type": "array", "items": hint_schema(args[0])} if args else {"type": "array"}
    if origin is tuple:
        if not args:
            return {"type": "array"}
        if len(args) == 1:
            raise _Unsupported(f"{hint!r} is a tuple of one element: use list[...] for several, or the element's "
                               f"type for one")
        if ... in args:
            raise _Unsupported(f"{hint!r} has '...': use list[...] for a sequence of any length")
        return {"type": "array", "prefixItems": [hint_schema(t) for t in args]}
    if origin is dict:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = hint_schema(args[1])
        return schema
    raise _Unsupported(f"{hint!r} has no JSON schema (a custom or abstract generic type)")


def _plain_type(hint) -> dict | None:
    try:
        schema = PLAIN.get(hint)
    except TypeError:  # unhashable
        return None
    if schema is not None:
        return dict(schema)
    # transformers also knows PIL images and torch tensors (as "image" and "audio"); a hint naming one of them means
    # its module is already imported, so it is looked up, never imported here
    pil = sys.modules.get("PIL.Image")
    if pil is not None and hint is getattr(pil, "Image", None):
        return {"type": "image"}
    torch = sys.modules.get("torch")
    if torch is not None and hint is getattr(torch, "Tensor", None):
        return {"type": "audio"}
    return None


def _enum(values: list, what: str) -> dict:
    if not values:
        raise _Unsupported(f"is {what} with no members, so no value could match it")
    if any(type(v) not in SCALARS for v in values):
        raise _Unsupported(f"is {what} whose values are not all JSON scalars (int, float, str, bool, None): {values}")
    names = list(dict.fromkeys(SCALARS[type(v)] for v in values))
    return {"type": names[0] if len(names) == 1 else names, "enum": values}
