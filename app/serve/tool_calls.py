"""Tool calls in a reply's text, parsed into OpenAI's `tool_calls` as the text streams.

Each model family writes its calls its own way, and its chat template shows which (`for_template` reads it):
- Qwen 2.5/3 and Hermes wrap each call in tags anywhere in the answer:
  `<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>`;
- Llama 3.1/3.2/4 answer with nothing but the call: `{"name": "f", "parameters": {...}}`, after `<|python_tag|>` or
  not, several separated by `;`;
- Mistral (Nemo, Small) ends its answer with `[TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]`.
A parser is fed the answer piece by piece and returns the content it lets through and the calls it completed; text
that may still turn into a call (a tag's beginning, an opening `{`) is held back until it is decided, so the pieces
add up to what parsing the whole text gives however it was cut. A call that does not parse (bad JSON, no name,
arguments that are not an object) is not a call: its text stays content, exactly as the model wrote it.
"""

from __future__ import annotations

import json
import secrets
import string
import uuid
from collections.abc import Callable

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
MISTRAL_TAG = "[TOOL_CALLS]"


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def new_mistral_id() -> str:
    """Nine letters and digits: Mistral's templates refuse any other id when the call comes back in a chat."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))


def call_from(obj, arguments_keys: tuple[str, ...], new_id: Callable[[], str]) -> dict | None:
    """OpenAI's tool call for a parsed JSON object `{"name": ..., <arguments key>: {...}}`, None if it is not one.
    Arguments become a JSON string, as OpenAI sends them; given as a string, they must hold a JSON object."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    key = next((k for k in arguments_keys if k in obj), None)
    arguments = {} if key is None else obj[key]
    if isinstance(arguments, str):
        try:
            if not isinstance(json.loads(arguments), dict):
                return None
        except ValueError:
            return None
    elif isinstance(arguments, dict):
        arguments = json.dumps(arguments, ensure_ascii=False)
    else:
        return None
    return {"id": new_id(), "type": "function", "function": {"name": obj["name"], "arguments": arguments}}


def held_prefix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `marker` (what must wait for more text)."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class HermesParser:
    """`<tool_call>{json}</tool_call>` blocks among content (Qwen, Hermes). The whitespace around a call goes with it
    (the templates write it when they render the call back: `content + "\\n<tool_call>..."`), so a reply of calls
    alone has no content; other whitespace is content, held back until the text after it shows it is not a call's."""

    def __init__(self, new_id: Callable[[], str] = new_call_id):
        self.new_id = new_id
        self._buf = ""  # text not yet returned: a tag's beginning, or a whole block up to its closing tag
        self._inside = False
        self._space = ""  # whitespace at the end of the content so far: dropped if a call follows
        self._after_call = False  # the last thing was a call: the whitespace after it is dropped

    def feed(self, text: str, final: bool = False) -> tuple[str, list[dict]]:
        buf, content, calls = self._buf + text, "", []
        while True:
            if not self._inside:
                at = buf.find(HERMES_OPEN)
                if at < 0:
                    keep = 0 if final else held_prefix(buf, HERMES_OPEN)
                    content, buf = content + self._content(buf[:len(buf) - keep]), buf[len(buf) - keep:]
                    break
                content, buf, self._inside = content + self._content(buf[:at]), buf[at:], True
            end = buf.find(HERMES_CLOSE)
            if end < 0:
                if final:  # never closed: what the model wrote is content
                    content, buf = content + self._content(buf), ""
                break
            block, buf = buf[:end + len(HERMES_CLOSE)], buf[end + len(HERMES_CLOSE):]
            self._inside = False
            try:
                call = call_from(json.loads(block[len(HERMES_OPEN):-len(HERMES_CLOSE)]), ("arguments", "parameters"),
                                 self.new_id)
            except ValueError:
                call = None
            if call is None:
                content += self._content(block)
            else:
                calls.append(call)
                self._space, self._after_call = "", True
        if final:
            content, self._space = content + self._space, ""
        self._buf = buf
        return content, calls

    def _content(self, text: str) -> str:
        """What content `text` adds: none of the whitespace after a call, and its own trailing whitespace later."""
        if self._after_call:
            text = text.lstrip()
            self._after_call = not text
        text = self._space + text
        body = text.rstrip()
        self._space = text[len(body):]
        return body


class LlamaJsonParser:
    """A reply that is only JSON calls, `{"name": ..., "parameters": {...}}` (`;`-separated, after an optional
    `<|python_tag|>`): decided at the first character that is not whitespace or the tag, parsed when the reply ends."""

    def __init__(self, new_id: Callable[[], str] = new_call_id):
        self.new_id = new_id
        self._buf = ""
        self._state = "before"  # before: undecided; call: holding a JSON reply; text: passing everything through

    def feed(self, text: str, final: bool = False) -> tuple[str, list[dict]]:
        if self._state == "text":
            return text, []
        self._buf += text
        if self._state == "before":
            self._state = self._decide(self._buf, final)
            if self._state == "text":
                out, self._buf = self._buf, ""
                return out, []
        if not final:
            return "", []
        out, self._buf = self._buf, ""
        calls = self._parse(out)
        return ("", calls) if calls else (out, [])

    @staticmethod
    def _decide(text: str, final: bool) -> str:
        head = text.lstrip()
        if head.startswith(PYTHON_TAG):
            head = head[len(PYTHON_TAG):].lstrip()
        elif PYTHON_TAG.startswith(head) and not final:
            return "before"  # whitespace or the tag's beginning: wait for more
        if head.startswith("{"):
            return "call"
        return "before" if not head and not final else "text"

    def _parse(self, text: str) -> list[dict]:
        text = text.strip()
        text = text.removeprefix(PYTHON_TAG)
        decoder, calls, at = json.JSONDecoder(), [], 0
        while True:
            while at < len(text) and (text[at].isspace() or text[at] == ";"):
                at += 1
            if at == len(text):
                return calls
            try:
                obj, at = decoder.raw_decode(text, at)
            except ValueError:
                return []
            call = call_from(obj, ("parameters", "arguments"), self.new_id)
            if call is None:
                return []
            calls.append(call)


class MistralParser:
    """Content, then `[TOOL_CALLS]` and a JSON list of calls to the end of the reply (Mistral's v3 tokenizers): the
    content streams until the tag, the calls are parsed when the reply ends."""

    def __init__(self, new_id: Callable[[], str] = new_mistral_id):
        self.new_id = new_id
        self._buf = ""
        self._calling = False  # the tag was met: everything after it is held for the calls

    def feed(self, text: str, final: bool = False) -> tuple[str, list[dict]]:
        buf, content = self._buf + text, ""
        if not self._calling:
            at = buf.find(MISTRAL_TAG)
            if at < 0:
                keep = 0 if final else held_prefix(buf, MISTRAL_TAG)
                self._buf = buf[len(buf) - keep:]
                return buf[:len(buf) - keep], []
            content, buf, self._calling = buf[:at], buf[at:], True
        self._buf = "" if final else buf
        if not final:
            return content, []
        calls = self._parse(buf[len(MISTRAL_TAG):])
        return (content, calls) if calls else (content + buf, [])

    def _parse(self, text: str) -> list[dict]:
        try:
            objs = json.loads(text)
        except ValueError:
            return []
        objs = objs if isinstance(objs, list) else [objs]
        calls = [call_from(obj, ("arguments",), self.new_id) for obj in objs]
        return [] if None in calls else calls


def for_template(template: str | None):
    """The parser class for the calls a model with this chat template writes; None when it shows no format we
    parse (its replies stay content)."""
    template = template or ""
    if HERMES_OPEN in template:
        return HermesParser
    if MISTRAL_TAG in template:
        return MistralParser
    if '"parameters"' in template and '{"name"' in template:
        return LlamaJsonParser
    return None
