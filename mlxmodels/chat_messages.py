"""What a chat template sees: messages, tools and variables prepared the way transformers 5 prepares them.

Templates are written against transformers' apply_chat_template, so a prompt only renders as the model was trained
if the template gets the same data. transformers (utils/chat_template_utils.py) does three things before rendering:

- rebuilds everything the template can see out of plain JSON types: dict/list/tuple/str/int/float/bool/None, with
  str/int/float subclasses (enums, numpy scalars) cut back to the base type, dataclasses and pydantic models (the
  OpenAI SDK's messages) turned into dicts, anything else replaced by a placeholder naming its type ("<ndarray>");
- drops a message's keys whose value is None (APIs send `content=None` or `tool_calls=None`; templates handle a
  missing key, but print "None" or crash on a null one);
- copies a message's reasoning, given as `reasoning_content`, `thinking` or `reasoning`, to `reasoning_content`
  (what Qwen3, DeepSeek and SmolLM3 templates read) and `thinking` (what gpt-oss reads).

Tools are JSON schema dicts, or Python functions (and bound methods), which become the schema transformers'
get_json_schema writes for them (tool_schema.py); anything else is refused, as transformers refuses it.

Tool calls and list-of-parts content pass through as they are: a tool call's `arguments` may be a dict or a JSON
string, and each template decides how to print either (Qwen3 prints a string as is, Llama 3.1 encodes it again).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from . import tool_schema

REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # the first is the one templates read
MAX_DEPTH = 100  # nesting a conversation may have; deeper is a cycle or an attack, and would exhaust the stack


class MessagesInvalid(ValueError):
    """Messages, tools or documents a template cannot be given; the message says which and why."""


def prepare(messages, tools=None, documents=None, **variables) -> dict[str, Any]:
    """The template's context: messages, tools, documents and the extra variables, as transformers passes them."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, (list, tuple)):
        raise MessagesInvalid(f"messages must be a list of dicts, not {type(messages).__name__}")
    prepared = []
    for n, message in enumerate(_plain(messages, 0)):
        if not isinstance(message, dict):
            raise MessagesInvalid(f"message {n} is a {type(message).__name__}, not a dict with 'role' and 'content'")
        prepared.append(_alias_reasoning({k: v for k, v in message.items() if v is not None}))
    if tools is not None:
        if isinstance(tools, (list, tuple)):
            tools = [_tool_schema(n, t) if tool_schema.is_tool_function(t) else t for n, t in enumerate(tools)]
        tools = _plain(tools, 0)
        if not isinstance(tools, (list, tuple)) or not all(isinstance(t, dict) for t in tools):
            raise MessagesInvalid("tools must be a list of JSON schemas (dicts like {'type': 'function', "
                                  "'function': {'name': ..., 'parameters': ...}}) or of Python functions with type "
                                  "hints and a Google-style docstring")
        tools = list(tools)
    if documents is not None:
        documents = _plain(documents, 0)
        if not isinstance(documents, list) or not all(isinstance(d, dict) for d in documents):
            raise MessagesInvalid("documents must be a list of dicts with 'title' and 'text' keys")
    return {"messages": prepared, "tools": tools, "documents": documents, **_plain(variables, 0)}


def _tool_schema(n: int, function) -> dict:
    try:
        return tool_schema.function_schema(function)
    except tool_schema.ToolSchemaInvalid as e:
        raise MessagesInvalid(f"tools[{n}]: {e}") from None


def _alias_reasoning(message: dict) -> dict:
    reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}  # the same order as transformers


def _plain(value, depth: int):
    """transformers' _plain_template_data, with a bound on nesting (a list that contains itself recurses forever)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if depth > MAX_DEPTH:
        raise MessagesInvalid(f"the messages are nested more than {MAX_DEPTH} levels deep (or contain themselves)")
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k, depth + 1): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v, depth + 1) for v in value)
    if type(value).__module__ == "numpy" and callable(getattr(value, "item", None)) and getattr(value, "ndim", 1) == 0:
        return _plain(value.item(), depth + 1)  # np.bool_(False) must stay falsy, not become "<bool_>"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump(), depth + 1)
    return f"<{type(value).__name__}>"
