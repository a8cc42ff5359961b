"""Request bodies of /v1/chat/completions and /v1/completions -> a checked Ask; every mistake is a RequestError
naming its parameter.

A parameter we know but cannot honour (`n` > 1, `echo`, a JSON response format, a forced tool choice) is refused
rather than ignored, as is a parameter we do not know: a client that asks for something gets it or is told. `null`
counts as absent, as OpenAI's own server takes it. Sampling fields not given fall back to `defaults` (the model's
generation_config.json), then to OpenAI's defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from .errors import RequestError

MAX_STOPS = 16
MAX_TOP_LOGPROBS = 20
# accepted and without effect on a local server (who the user is, storing, tiers, parallel calls are always allowed)
IGNORED = ("user", "metadata", "store", "service_tier", "parallel_tool_calls")
COMMON = ("model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "frequency_penalty",
          "presence_penalty", "repetition_penalty", "stream", "stream_options", "n", "logit_bias") + IGNORED
CHAT = COMMON + ("messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools", "tool_choice",
                 "response_format", "chat_template_kwargs")
COMPLETION = COMMON + ("prompt", "logprobs", "echo", "suffix", "best_of")


@dataclass
class Ask:
    """What one request asks for, checked."""
    chat: bool
    model: Optional[str]
    messages: Optional[list] = None  # chat: still in OpenAI's shape (chat.chat_prompt checks each message)
    tools: Optional[list] = None
    template_kwargs: Dict[str, Any] = field(default_factory=dict)
    prompt: Union[str, List[int], None] = None  # completions: text, or token ids
    max_tokens: Optional[int] = None  # None: as much as the context leaves
    sampling: Dict[str, Any] = field(default_factory=dict)  # SamplingParams' fields but max_tokens, stop_tokens
    stop: List[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False


def parse_chat(body, defaults: Optional[dict] = None) -> Ask:
    b = _Body(body, CHAT)
    ask = Ask(chat=True, model=b.string("model"), messages=b.get("messages"))
    if ask.messages is None:
        raise RequestError("messages is missing: a chat request needs a list of messages", param="messages")
    ask.max_tokens = b.whole("max_completion_tokens", 1)
    if ask.max_tokens is None:
        ask.max_tokens = b.whole("max_tokens", 1)
    logprobs = b.boolean("logprobs") or False
    top = b.whole("top_logprobs", 0, MAX_TOP_LOGPROBS) or 0
    if top and not logprobs:
        raise RequestError("top_logprobs needs logprobs set to true", param="top_logprobs")
    ask.tools = _tools(b)
    kwargs = b.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise RequestError("chat_template_kwargs must be an object of template variables",
                           param="chat_template_kwargs")
    ask.template_kwargs = dict(kwargs or {})
    fmt = b.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise RequestError("response_format: only {'type': 'text'} is supported (no constrained JSON output)",
                           param="response_format")
    _common(b, ask, defaults or {}, logprobs, top)
    return ask


def parse_completion(body, defaults: Optional[dict] = None) -> Ask:
    b = _Body(body, COMPLETION)
    ask = Ask(chat=False, model=b.string("model"), prompt=_prompt(b.get("prompt")))
    ask.max_tokens = b.whole("max_tokens", 1)
    top = b.whole("logprobs", 0, MAX_TOP_LOGPROBS)  # completions: the number of top logprobs, null for none
    for name, off in (("echo", False), ("best_of", 1)):
        if b.get(name) not in (None, off):
            raise RequestError(f"{name} is not supported; leave it out", param=name)
    if b.get("suffix") not in (None, ""):
        raise RequestError("suffix (fill-in-the-middle) is not supported; leave it out", param="suffix")
    _common(b, ask, defaults or {}, top is not None, top or 0)
    return ask


def _common(b: "_Body", ask: Ask, defaults: dict, logprobs: bool, top_logprobs: int) -> None:
    if b.whole("n", 1) not in (None, 1):
        raise RequestError("n must be 1: this server returns one choice per request", param="n")
    if b.get("logit_bias") not in (None, {}):
        raise RequestError("logit_bias is not supported; leave it out", param="logit_bias")
    ask.stream = b.boolean("stream") or False
    options = b.get("stream_options")
    if options is not None:
        if not ask.stream:
            raise RequestError("stream_options is only allowed with stream set to true", param="stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise RequestError("stream_options must be {'include_usage': true|false}", param="stream_options")
        ask.include_usage = _Body(options, ("include_usage",), "stream_options.").boolean("include_usage") or False
    ask.stop = _stops(b.get("stop"))
    given = dict(
        temperature=b.number("temperature", 0.0, 2.0), top_p=b.number("top_p", 0.0, 1.0, low_open=True),
        top_k=b.whole("top_k", 0), min_p=b.number("min_p", 0.0, 1.0), seed=b.whole("seed", 0, (1 << 64) - 1),
        frequency_penalty=b.number("frequency_penalty", -2.0, 2.0),
        presence_penalty=b.number("presence_penalty", -2.0, 2.0),
        repetition_penalty=b.number("repetition_penalty", 0.0, math.inf, low_open=True))
    sampling = {k: v for k, v in defaults.items() if k in given and k != "seed"}
    sampling.update({k: v for k, v in given.items() if v is not None})
    ask.sampling = dict(sampling, logprobs=logprobs, top_logprobs=top_logprobs)


def _tools(b: "_Body") -> Optional[list]:
    tools, choice = b.get("tools"), b.get("tool_choice")
    if choice in (None, "auto"):
        return tools
    if choice == "none":
        return None  # the model is not told of them
    raise RequestError("tool_choice must be 'auto' or 'none' (a required or named tool cannot be enforced here)",
                       param="tool_choice")


def _prompt(prompt) -> Union[str, List[int]]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str) and prompt:
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                                   for t in prompt):
        return prompt
    if prompt is None:
        raise RequestError("prompt is missing: a completion request needs the prompt text", param="prompt")
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
        raise RequestError("prompt: one prompt per request (send a batch as separate requests)", param="prompt")
    raise RequestError("prompt must be a non-empty string or a list of token ids", param="prompt")


def _stops(stop) -> List[str]:
    stops = [stop] if isinstance(stop, str) else stop
    if stops is None:
        return []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise RequestError("stop must be a non-empty string or a list of them", param="stop")
    if len(stops) > MAX_STOPS:
        raise RequestError(f"stop has {len(stops)} strings; at most {MAX_STOPS}", param="stop")
    return stops


class _Body:
    """A JSON object's fields, read by kind; unknown fields refused when it is made."""

    def __init__(self, body, known, prefix: str = ""):
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object", param=None)
        unknown = sorted(set(body) - set(known))
        if unknown:
            raise RequestError(f"unknown parameter {prefix}{unknown[0]}: this server does not support it",
                               param=prefix + unknown[0])
        self.body, self.prefix = body, prefix

    def get(self, name):
        return self.body.get(name)

    def _fail(self, name, expected):
        raise RequestError(f"{self.prefix}{name} must be {expected}, got {self.body[name]!r}", param=self.prefix + name)

    def string(self, name) -> Optional[str]:
        value = self.get(name)
        if value is not None and not isinstance(value, str):
            self._fail(name, "a string")
        return value

    def boolean(self, name) -> Optional[bool]:
        value = self.get(name)
        if value is not None and not isinstance(value, bool):
            self._fail(name, "true or false")
        return value

    def whole(self, name, low: int, high: Optional[int] = None) -> Optional[int]:
        value = self.get(name)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 5.0 from a client that writes every number as a float
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
            self._fail(name, f"a whole number >= {low}" + (f" and <= {high}" if high is not None else ""))
        return value

    def number(self, name, low: float, high: float, low_open: bool = False) -> Optional[float]:
        value = self.get(name)
        if value is None:
            return None
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (value > low if low_open else value >= low) and value <= high)
        if not ok:
            bounds = f"> {low}" if low_open else f">= {low}"
            self._fail(name, f"a number {bounds}" + (f" and <= {high}" if math.isfinite(high) else ""))
        return float(value)
