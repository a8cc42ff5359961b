"""A thinking model's reply, split into its reasoning and its answer as the text streams.

Thinking models write their reasoning first, between two markers, then the answer: Qwen3, SmolLM3, DeepSeek-R1,
GLM, MiniMax and Kimi use `<think>`/`</think>`, Magistral `[THINK]`/`[/THINK]`, Seed-OSS
`<seed:think>`/`</seed:think>`. The reply may open with the start marker itself (Qwen3), or the template may end
the prompt with it (DeepSeek-R1-0528, Qwen3-Thinking-2507) so the reply begins inside the reasoning: `starts_inside`
tells from the prompt's text. A start marker counts only at the very beginning of a reply (after whitespace): one
later in an answer is text the model is showing, not reasoning. (gpt-oss writes channels instead,
`<|channel|>analysis<|message|>...<|end|>`, which this does not split: its text passes through as the answer.)

`Splitter` is fed one piece of text per token and returns what each piece adds to the reasoning and to the
answer, markers removed; newlines around the reasoning and at the start of the answer are dropped, as the templates
drop them when they render a reply back (Qwen3's `strip('\\n')`). A marker split across tokens (`</`, `think>`) is
held back until it is complete or cannot be one, so the pieces add up to what splitting the whole text at once
gives (`split_text`) however the text was cut. `split_stream` does this for `stream_generate`'s responses.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterable, Iterator, Optional

from .generate import GenerationResponse


@dataclass(frozen=True)
class Markers:
    start: str
    end: str


THINK = Markers("<think>", "</think>")
KNOWN = (THINK, Markers("[THINK]", "[/THINK]"), Markers("<seed:think>", "</seed:think>"))


def markers_for(tokenizer) -> Markers:
    """The markers this model reasons between: the first known pair whose markers are tokens of its vocabulary or
    both appear in its chat template; `<think>` otherwise."""
    template = getattr(tokenizer, "chat_template", None) or ""
    to_id = getattr(tokenizer, "token_to_id", None)
    for m in KNOWN:
        if to_id is not None and to_id(m.start) is not None and to_id(m.end) is not None:
            return m
        if m.start in template and m.end in template:
            return m
    return THINK


def starts_inside(prompt: str, markers: Markers = THINK) -> bool:
    """Whether a reply to `prompt` begins inside the reasoning: the prompt (a rendered template) ends with the start
    marker, as DeepSeek-R1-0528's generation prompt `<｜Assistant｜><think>\\n` does."""
    return prompt.rstrip().endswith(markers.start)


@dataclass(frozen=True)
class Split:
    reasoning: str = ""
    answer: str = ""


BEFORE, REASONING, ANSWER = "before", "reasoning", "answer"


class Splitter:
    """Splits a reply fed piece by piece (one `feed` per token); `finish()` flushes what was held back.

    `reasoning` and `answer` hold everything returned so far; `reasoning_tokens` counts the pieces that belong to the
    reasoning, markers included; `thinking` is true while the reply is inside its reasoning."""

    def __init__(self, markers: Markers = THINK, inside: bool = False):
        self.markers = markers
        self.state = REASONING if inside else BEFORE
        self.reasoning = self.answer = ""
        self.reasoning_tokens = 0
        self._buf = ""  # text not yet returned: a marker's beginning, newlines that may be dropped
        self._undecided = 0  # pieces fed before the reply showed whether it reasons
        self._entered = False  # the reply opened with the start marker
        self._strip = True  # drop newlines at the start of the current part

    @classmethod
    def for_prompt(cls, tokenizer, prompt: str) -> "Splitter":
        """A splitter for the reply to `prompt` (text): the tokenizer's markers, starting inside them if the prompt
        opened the reasoning."""
        markers = markers_for(tokenizer)
        return cls(markers, starts_inside(prompt, markers))

    @property
    def thinking(self) -> bool:
        return self.state == REASONING

    def feed(self, text: str) -> Split:
        before = self.state
        out = self._run(text, final=False)
        if before == REASONING:
            self.reasoning_tokens += 1
        elif before == BEFORE:
            self._undecided += 1
            if self._entered:  # this piece completed the start marker: the pieces before it were its beginning
                self.reasoning_tokens += self._undecided
            if self.state != BEFORE:
                self._undecided = 0
        return out

    def finish(self) -> Split:
        """The text held back at the end of the reply (a partial marker is text after all). Idempotent."""
        return self._run("", final=True)

    def _run(self, text: str, final: bool) -> Split:
        buf = self._buf + text
        reasoning = answer = ""
        while True:
            if self.state == BEFORE:
                head = buf.lstrip()
                if head.startswith(self.markers.start):
                    buf = head[len(self.markers.start):]
                    self.state, self._entered, self._strip = REASONING, True, True
                    continue
                if not final and (not head or self.markers.start.startswith(head)):
                    break  # whitespace or the start marker's beginning: wait for more
                self.state, self._strip = ANSWER, False  # not a thinking reply: everything is answer
                continue
            if self.state == REASONING:
                if self._strip:
                    buf = buf.lstrip("\n")
                    if not buf and not final:
                        break
                    self._strip = False
                end = buf.find(self.markers.end)
                if end >= 0:
                    reasoning += buf[:end].rstrip("\n")
                    buf = buf[end + len(self.markers.end):]
                    self.state, self._strip = ANSWER, True
                    continue
                keep = 0 if final else _held(buf, self.markers.end)
                emit, buf = buf[:len(buf) - keep], buf[len(buf) - keep:]
                reasoning += emit.rstrip("\n") if final else emit
                break
            if self._strip:  # ANSWER right after the end marker
                buf = buf.lstrip("\n")
                if not buf and not final:
                    break
                self._strip = False
            answer, buf = answer + buf, ""
            break
        self._buf = buf
        self.reasoning += reasoning
        self.answer += answer
        return Split(reasoning, answer)


def _held(text: str, marker: str) -> int:
    """How many characters at the end of reasoning `text` to hold back: a beginning of the end marker, and the
    newlines before it (dropped if the marker follows)."""
    keep = next((k for k in range(min(len(marker) - 1, len(text)), 0, -1) if text.endswith(marker[:k])), 0)
    body = text[:len(text) - keep]
    return keep + len(body) - len(body.rstrip("\n"))


def split_text(text: str, markers: Markers = THINK, inside: bool = False) -> Split:
    """A whole reply's reasoning and answer (what a Splitter fed the same text piece by piece returns in all)."""
    s = Splitter(markers, inside)
    s.feed(text)
    s.finish()
    return Split(s.reasoning, s.answer)


@dataclass
class ReasoningResponse(GenerationResponse):
    """A GenerationResponse (`text` as generated, markers included) with `text` split: its new `reasoning` and
    `answer` text, the reasoning's token count so far, and whether the reply is still thinking."""

    reasoning: str = ""
    answer: str = ""
    reasoning_tokens: int = 0
    thinking: bool = False


def split_stream(responses: Iterable[GenerationResponse], splitter: Optional[Splitter] = None,
                 ) -> Iterator[ReasoningResponse]:
    """`stream_generate`'s responses with their text split by `splitter` (default: `<think>` markers, the reply
    starting outside them); the last response (finish_reason set) also carries what was held back. Closing this
    closes `responses`, so the cache holds exactly the tokens yielded, as with `stream_generate` itself.

        prompt = tokenizer.apply_chat_template(messages, enable_thinking=True)
        stream = mlxmodels.stream_generate(model, tokenizer, prompt)
        for r in split_stream(stream, Splitter.for_prompt(tokenizer, prompt)):
            print(r.reasoning or r.answer, end="")
    """
    splitter = splitter or Splitter()
    try:
        for r in responses:
            piece = splitter.feed(r.text)
            if r.finish_reason is not None:
                tail = splitter.finish()
                piece = Split(piece.reasoning + tail.reasoning, piece.answer + tail.answer)
            yield ReasoningResponse(**{f.name: getattr(r, f.name) for f in fields(r)}, reasoning=piece.reasoning,
                                    answer=piece.answer, reasoning_tokens=splitter.reasoning_tokens,
                                    thinking=splitter.thinking)
    finally:
        close = getattr(responses, "close", None)
        if close is not None:
            close()
