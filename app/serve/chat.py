"""OpenAI chat messages and tools -> the prompt the model's chat template makes of them.

Requests come in OpenAI's shape, templates are written for transformers' (what transformers' docs ask of tool-use
templates), so the messages are checked and brought over:
- content is a string or a list of text parts, joined with newlines (as vLLM joins them); other parts (images,
  audio) are refused: this server runs text models;
- `developer` is OpenAI's newer name for `system`: templates know only `system`;
- an assistant's tool calls carry their arguments as a JSON string; templates expect the object (Llama 3.1 would
  encode a string a second time), so it is parsed;
- a tool's reply needs the `tool_call_id` it answers.
Anything wrong is a RequestError naming the field (`messages[2].content`); a template that refuses the chat
(Mistral's strict alternation, Llama's one call per turn) is one too, with the template's own words.
"""

from __future__ import annotations

import json

from mlxmodels.tokenizer import TokenizerError

from .errors import RequestError

ROLES = ("system", "developer", "user", "assistant", "tool")
# the variables apply_chat_template sets itself: chat_template_kwargs may not replace them
RESERVED = ("messages", "tools", "documents", "add_generation_prompt", "tokenize")
REASONING = ("reasoning_content", "reasoning")  # an earlier reply's reasoning, sent back by clients


def chat_prompt(tokenizer, messages: list, tools: list | None, template_kwargs: dict) -> tuple[list[int], str]:
    """(prompt ids, prompt text) for a chat request, through the model's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise RequestError("this model has no chat template: send the prompt as text to /v1/completions",
                           param="messages")
    chat = convert_messages(messages)
    tool_list = check_tools(tools)
    clash = sorted(set(template_kwargs) & set(RESERVED))
    if clash:
        raise RequestError(f"chat_template_kwargs may not set {clash[0]!r}: the request's own fields set it",
                           param="chat_template_kwargs")
    try:
        text = tokenizer.apply_chat_template(chat, tools=tool_list, add_generation_prompt=True, **template_kwargs)
    except TokenizerError as e:
        raise RequestError(f"the model's chat template cannot render these messages: {e}", param="messages") from None
    return tokenizer.encode(text, add_special_tokens=False), text


def convert_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of {'role': ..., 'content': ...} objects",
                           param="messages")
    return [_message(m, f"messages[{n}]") for n, m in enumerate(messages)]


def _message(message, where: str) -> dict:
    if not isinstance(message, dict):
        raise RequestError(f"{where} must be an object with 'role' and 'content'", param=where)
    role = message.get("role")
    if role not in ROLES:
        raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}, not {role!r}", param=f"{where}.role")
    out = {"role": "system" if role == "developer" else role}
    calls = message.get("tool_calls") if role == "assistant" else None
    content = message.get("content")
    if content is None and calls is None:
        raise RequestError(f"{where}.content is missing: a {role} message needs text", param=f"{where}.content")
    if content is not None:
        out["content"] = _text(content, f"{where}.content")
    elif role == "assistant":
        out["content"] = ""  # OpenAI sends null beside tool calls; templates (Qwen3's) need a string
    if isinstance(message.get("name"), str):
        out["name"] = message["name"]
    elif message.get("name") is not None:
        raise RequestError(f"{where}.name must be a string", param=f"{where}.name")
    if calls is not None:
        out["tool_calls"] = _tool_calls(calls, f"{where}.tool_calls")
    if role == "assistant":
        for key in REASONING:
            if isinstance(message.get(key), str):
                out["reasoning_content"] = message[key]
                break
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise RequestError(f"{where}.tool_call_id is missing: a tool message answers the call with that id",
                               param=f"{where}.tool_call_id")
        out["tool_call_id"] = call_id
    return out


def _text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(f"{where} must be a string or a list of text parts", param=where)
    texts = []
    for n, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise RequestError(f"{where}[{n}] is not a text part ({{'type': 'text', 'text': ...}}) but {kind!r}: "
                               "this server takes text only", param=f"{where}[{n}]")
        texts.append(part["text"])
    return "\n".join(texts)


def _tool_calls(calls, where: str) -> list[dict]:
    if not isinstance(calls, list):
        raise RequestError(f"{where} must be a list of tool calls", param=where)
    out = []
    for n, call in enumerate(calls):
        at = f"{where}[{n}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise RequestError(f"{at} must be {{'id': ..., 'type': 'function', 'function': {{'name': ..., "
                               "'arguments': ...}}}}", param=f"{at}.function")
        arguments = fn.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                arguments = None
        if not isinstance(arguments, dict):
            raise RequestError(f"{at}.function.arguments must be a JSON object encoded as a string",
                               param=f"{at}.function.arguments")
        converted = {"type": "function", "function": {"name": fn["name"], "arguments": arguments}}
        if isinstance(call.get("id"), str):
            converted = {"id": call["id"], **converted}
        out.append(converted)
    return out


def check_tools(tools) -> list | None:
    """The tools as given, once each is a function with a name and, if any, an object of parameters."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise RequestError("tools must be a list of {'type': 'function', 'function': {...}} objects", param="tools")
    for n, tool in enumerate(tools):
        at = f"tools[{n}]"
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise RequestError(f"{at} must be {{'type': 'function', 'function': {{'name': ..., 'parameters': ...}}}}",
                               param=at)
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise RequestError(f"{at}.function.name must be a non-empty string", param=f"{at}.function.name")
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            raise RequestError(f"{at}.function.parameters must be a JSON schema object",
                               param=f"{at}.function.parameters")
    return tools or None
