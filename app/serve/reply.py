"""A reply's tokens, turned into what the API sends: content, reasoning and tool calls, cut at the stop strings.

Each token goes through four stages, each of which holds back text it cannot decide yet, so the deltas add up to
what the whole text gives however the reply was cut into tokens:
1. the streaming detokenizer (no half characters), special tokens kept (`<think>`, `<tool_call>` and
   `<|python_tag|>` are markers the later stages read; the engine never hands over the end-of-turn token);
2. the stop strings: text that may be a stop string's beginning waits; the reply ends at the first stop string to
   be completed, the text before it kept (`stopped`: the caller cancels the stream, finish reason "stop");
3. for a chat with a thinking template, the reasoning split (mlxmodels/reasoning.py);
4. for a chat that offered tools, the answer's tool calls (tool_calls.py, the format the template shows; the ids
   OpenAI's `call_...`, or the nine letters and digits Mistral's templates require).
/v1/completions (`chat=False`) gets stages 1 and 2 only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlxmodels.reasoning import Splitter, markers_for

from . import tool_calls as calls_lib


@dataclass
class Delta:
    """What one token (or the end) adds: text, reasoning, and completed tool calls as OpenAI's streaming objects
    (`index`, `id`, `type`, `function` with the whole `name` and `arguments`)."""
    content: str = ""
    reasoning: str = ""
    tool_calls: list[dict] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning or self.tool_calls)


class StopStrings:
    """Cuts text fed piece by piece at the first stop string completed (the one ending first; of two ending at the
    same character, the longer), holding back any end of the text that may begin one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.stopped = False
        self._buf = ""

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        buf = self._buf + text
        hits = [(at + len(s), -len(s), at) for s in self.stops for at in [buf.find(s)] if at >= 0]
        if hits:
            self.stopped, self._buf = True, ""
            return buf[:min(hits)[2]]
        keep = max((calls_lib.held_prefix(buf, s) for s in self.stops), default=0)
        self._buf = buf[len(buf) - keep:]
        return buf[:len(buf) - keep]

    def finish(self) -> str:
        """A held-back beginning that no stop string completed is text after all."""
        out, self._buf = ("" if self.stopped else self._buf), ""
        return out


def thinks(tokenizer) -> bool:
    """Whether the model reasons between markers: its template or vocabulary knows them."""
    markers = markers_for(tokenizer)
    template = getattr(tokenizer, "chat_template", None) or ""
    return markers.start in template or tokenizer.token_to_id(markers.start) is not None


class ReplyParser:
    """Feeds a reply's tokens through the stages above; `feed(token)` and `finish()` return Deltas.

    `stopped`: a stop string ended the reply; `tool_calls`: the calls parsed so far, as the message's `tool_calls`
    (no `index`); `content` and `reasoning`: everything returned so far."""

    def __init__(self, tokenizer, prompt_text: str, stop: list[str], chat: bool, tools: bool, new_call_id=None):
        self._detok = tokenizer.detokenizer()
        self._stops = StopStrings(stop)
        self._splitter: Splitter | None = (Splitter.for_prompt(tokenizer, prompt_text)
                                           if chat and thinks(tokenizer) else None)
        parser = calls_lib.for_template(getattr(tokenizer, "chat_template", None)) if chat and tools else None
        self._calls = None if parser is None else parser(new_call_id) if new_call_id else parser()
        self.tool_calls: list[dict] = []
        self.content = self.reasoning = ""
        self._finished = False

    @property
    def stopped(self) -> bool:
        return self._stops.stopped

    def feed(self, token: int) -> Delta:
        if self._finished:
            return Delta()
        text = self._stops.feed(self._detok.add_token(token))
        self._finished = self._stops.stopped  # a stop string ended the reply: flush everything held back now
        return self._through(text, final=self._finished)

    def finish(self) -> Delta:
        """What was held back, at the reply's end (a stop token, the length limit, a cancel); nothing after a stop
        string (that token's delta flushed it). Once."""
        if self._finished:
            return Delta()
        self._finished = True
        text = self._stops.feed(self._detok.finalize())
        return self._through(text + self._stops.finish(), final=True)

    def _through(self, text: str, final: bool) -> Delta:
        reasoning, answer = self._split(text, final)
        content, calls = self._parse(answer, final)
        first = len(self.tool_calls)
        self.tool_calls.extend(calls)
        self.content += content
        self.reasoning += reasoning
        return Delta(content, reasoning, [{"index": first + n, **c} for n, c in enumerate(calls)])

    def _split(self, text: str, final: bool) -> tuple[str, str]:
        if self._splitter is None:
            return "", text
        parts = [self._splitter.feed(text)] if text else []
        if final:
            parts.append(self._splitter.finish())
        return "".join(p.reasoning for p in parts), "".join(p.answer for p in parts)

    def _parse(self, text: str, final: bool) -> tuple[str, list[dict]]:
        if self._calls is None:
            return text, []
        return self._calls.feed(text, final)
