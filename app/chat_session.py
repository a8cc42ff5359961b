"""The conversation as the model sees it, with no UI: prompt building, KV cache reuse, context trimming.

One KV cache lives across turns. Each turn renders the whole kept conversation with the chat template, finds how
many leading tokens the cache already holds (`cache_tokens`: the previous prompt plus the tokens generated after
it), rewinds the cache to that common prefix and feeds only the rest. So a new message pays for its own tokens
(and the end-of-turn marker the template writes after the last reply); regenerate and edit-and-resend rewind to
where the conversation changed; opening another chat with the same system prompt reuses that prefix. A cache
that cannot rewind that far (sliding-window layers keep only the window) is rebuilt from the kept conversation.

When the conversation plus room for a reply outgrows the context, the oldest turns are dropped from what the
model sees (`Chat.context_start`); they stay in the chat and its file. The caller is told how many were dropped.

A thinking model's reply is split as it streams (mlxmodels.reasoning): the reply is saved as its answer
(`content`) and its reasoning (`reasoning_content`, what Qwen3's and DeepSeek-R1's templates read back; each
template decides whether an earlier turn's reasoning reaches the model again). The chat's template switches
(`enable_thinking`, ...) live in its settings (TEMPLATE_KWARGS) and are passed to every render.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional

from app import chat_branches
from app.chat_store import TEMPLATE_KWARGS, Chat, Sampling, check_template_kwargs
from app.reply_stats import stats_of
from mlxmodels.reasoning import Splitter, markers_for, split_stream, starts_inside

PLAIN_STOP = ["\nUser:"]


class ContextError(ValueError):
    """The newest message alone does not fit in the model's context."""


@dataclass
class Turn:
    """What one reply will cost: `feed` tokens to process after the `reused` ones the cache already holds."""

    feed: List[int]
    reused: int
    prompt_len: int
    max_tokens: int
    dropped: int  # messages dropped from the model's context to make this turn fit
    inside: bool = False  # the prompt ends inside the reasoning (DeepSeek-R1's `<think>\n`): so does the reply


def common_prefix(a: List[int], b: List[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ChatSession:
    """Owns the model-side state of the current chat. Not thread-safe: one turn at a time (the UI runs turns in a
    worker thread and refuses a second one while the first is running)."""

    def __init__(self, model, tokenizer, context_limit: int, chat: Optional[Chat] = None):
        self.model, self.tokenizer = model, tokenizer
        self.markers = markers_for(tokenizer)
        self.context_limit = int(context_limit)
        self.chat = chat or Chat()
        self.sampling = Sampling.from_dict(self.chat.settings)
        self.cache = None
        self.cache_tokens: List[int] = []  # what the cache holds, in order
        self._cache_chat: Optional[Chat] = None  # the chat whose turn last filled the cache
        self.cache_options: dict = {}  # model.make_cache's options for every new cache (max_kv_size=N)
        self.lead = None  # --parallel: rank 0's side of each turn, sent to the other ranks (app/parallel_chat.Lead)
        self._stop = threading.Event()

    def preload(self, cache: list, tokens: List[int]) -> None:
        """Start from a cache that holds `tokens` (a prompt-cache file): any chat whose prompt starts with them
        reuses it, as a chat reuses the previous one's prefix."""
        self.cache, self.cache_tokens, self._cache_chat = cache, list(tokens), None

    # ------------------------------------------------------------ the conversation

    @property
    def messages(self) -> List[dict]:
        return self.chat.messages

    @property
    def context_used(self) -> int:
        """Tokens of the current chat in the context: what the cache holds once this chat has had a turn; before
        that (a chat just opened or started, while the cache still holds the previous one's), what its kept
        conversation would take."""
        if self._cache_chat is self.chat:
            return len(self.cache_tokens)
        if not self.messages:
            return 0
        try:
            return len(self.encode())
        except Exception:  # a template that refuses this chat (shown when a reply is asked for): nothing measured
            return 0

    def use_model(self, model, tokenizer, context_limit: int) -> None:
        """Answer with another model from now on: its cache starts empty (the old model's is dropped with it)."""
        self.model, self.tokenizer = model, tokenizer
        self.markers = markers_for(tokenizer)
        self.context_limit = int(context_limit)
        self.cache, self.cache_tokens, self._cache_chat = None, [], None

    def open(self, chat: Chat) -> None:
        """Switch to another chat; the cache stays and is reused as far as the new chat's prompt matches it."""
        self.chat = chat
        self.sampling = Sampling.from_dict(chat.settings)

    def set_sampling(self, sampling: Sampling) -> None:
        self.sampling = sampling.check()
        self.chat.settings = {**self.chat.settings, **sampling.to_dict()}

    @property
    def template_kwargs(self) -> dict:
        return dict(self.chat.settings.get(TEMPLATE_KWARGS) or {})

    def set_template_kwargs(self, kwargs: dict) -> None:
        kwargs = check_template_kwargs(kwargs)
        settings = {k: v for k, v in self.chat.settings.items() if k != TEMPLATE_KWARGS}
        self.chat.settings = {**settings, TEMPLATE_KWARGS: kwargs} if kwargs else settings

    @property
    def thinking(self) -> Optional[bool]:
        """`enable_thinking` as set for this chat; None: the template's default."""
        return self.template_kwargs.get("enable_thinking")

    def set_thinking(self, on: Optional[bool]) -> None:
        kwargs = {k: v for k, v in self.template_kwargs.items() if k != "enable_thinking"}
        self.set_template_kwargs(kwargs if on is None else {**kwargs, "enable_thinking": on})

    def add_user(self, text: str) -> None:
        if self.messages and self.messages[-1]["role"] == "user":
            raise ValueError("the last message has no reply yet; regenerate or edit it instead")
        self.messages.append({"role": "user", "content": text})

    def drop_last_reply(self) -> None:
        """Regenerate: forget the last reply so the next turn answers the same message again."""
        if not self.messages:
            raise ValueError("nothing to regenerate yet; send a message first")
        if self.messages[-1]["role"] == "assistant":
            self.messages.pop()

    def edit(self, index: int, text: str) -> None:
        """Replace user message `index` and drop everything after it from the conversation; the version before
        stays as a branch of the chat when the edit loses a reply (app.chat_branches)."""
        if not 0 <= index < len(self.messages) or self.messages[index]["role"] != "user":
            raise ValueError(f"message {index} is not one of your messages")
        before, start = list(self.messages), self.chat.context_start
        self.messages[index] = {"role": "user", "content": text}
        del self.messages[index + 1:]
        chat_branches.keep(self.chat, before, start)
        self.chat.context_start = min(self.chat.context_start, index)

    def conversation(self, start: Optional[int] = None) -> List[dict]:
        start = self.chat.context_start if start is None else start
        system = [{"role": "system", "content": self.chat.system}] if self.chat.system.strip() else []
        return system + [_for_template(m) for m in self.messages[start:]]

    def render(self, start: Optional[int] = None) -> str:
        """The prompt for the next reply as text: the chat template (with the chat's switches) over system +
        messages[start:], or a plain transcript for a model without one."""
        messages = self.conversation(start)
        if getattr(self.tokenizer, "has_chat_template", False):
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                      **self.template_kwargs)
        return plain_prompt(messages)

    def encode(self, start: Optional[int] = None) -> List[int]:
        """The prompt's ids (no BOS added: a template writes its own)."""
        return self._ids(self.render(start))

    def _ids(self, text: str) -> List[int]:
        templated = getattr(self.tokenizer, "has_chat_template", False)
        return list(self.tokenizer.encode(text, add_special_tokens=not templated))

    # ------------------------------------------------------------ one turn

    def prepare(self) -> Turn:
        """Fit the conversation in the context (dropping the oldest turns if needed) and rewind the cache to the
        longest prefix it shares with the new prompt."""
        if not self.messages or self.messages[-1]["role"] != "user":
            raise ValueError("there is no message to answer")
        limit = self.context_limit
        reserve = min(self.sampling.max_tokens, max(1, limit // 4))  # room kept for the reply
        start, dropped = self.chat.context_start, 0
        while True:
            text = self.render(start)
            ids = self._ids(text)
            if len(ids) + reserve <= limit:
                break
            nxt = next((i for i in range(start + 1, len(self.messages)) if self.messages[i]["role"] == "user"), None)
            if nxt is None:  # only the newest message is left
                raise ContextError(f"this message needs {len(ids)} tokens with the system prompt, and the context "
                                   f"holds {limit} with room for a reply; shorten it or start with --context larger")
            dropped += nxt - start
            start = nxt
        self.chat.context_start = start
        reused = self._rewind(ids)
        self._cache_chat = self.chat
        return Turn(ids[reused:], reused, len(ids), min(self.sampling.max_tokens, limit - len(ids)), dropped,
                    starts_inside(text, self.markers))

    def _rewind(self, ids: List[int]) -> int:
        keep = common_prefix(self.cache_tokens, ids)
        keep = min(keep, len(ids) - 1)  # the last prompt token must run to give the first reply token
        if self.cache is not None and keep > 0:
            extra = len(self.cache_tokens) - keep
            try:
                for c in self.cache:
                    if extra:
                        c.trim(extra)
            except ValueError:  # a sliding window no longer holds what came before: start over
                keep = 0
        if self.cache is None or keep == 0:
            self.cache, keep = self.model.make_cache(**self.cache_options), 0
        self.cache_tokens = self.cache_tokens[:keep]
        return keep

    def stop(self) -> None:
        """Ask the running turn to stop after the current token (thread-safe)."""
        self._stop.set()

    def reply(self, turn: Turn, progress: Optional[Callable[[int, int], None]] = None) -> Iterator:
        """Stream the reply (ReasoningResponse pieces: text split into reasoning and answer) and record it with its
        stats (app.reply_stats); a stopped reply is kept as it is. `progress(done, total)` follows the prompt's
        chunks (of `turn.feed`, as stream_generate reports them)."""
        import mlxmodels
        from mlxmodels.generate import Interrupted, make_sampler

        s = self.sampling
        # MLX's global random state is per thread and starts the same in every new thread: without a seed of our
        # own, each turn (run in a fresh worker thread) would sample the same "random" reply.
        seed = s.seed if s.seed is not None else secrets.randbits(31)
        self._stop.clear()
        self.cache_tokens = self.cache_tokens + turn.feed
        tokens: List[int] = []
        last = None  # the latest response: its stats are the reply's
        stopped = False
        splitter = Splitter(self.markers, turn.inside)
        sampler, interrupt, stopped_at = None, self._stop.is_set, lambda n: self._stop.is_set()
        if self.lead is not None:  # every rank stops after the same token, and a prompt is fed whole on all
            sampler = self.lead.begin(turn.feed, turn.reused, turn.max_tokens,
                                      make_sampler(s.temperature, s.top_k, s.top_p, s.min_p), self._stop.is_set)
            interrupt, stopped_at = None, self.lead.stopped
        stream = split_stream(mlxmodels.stream_generate(
            self.model, self.tokenizer, turn.feed, max_tokens=turn.max_tokens, temperature=s.temperature,
            top_k=s.top_k, top_p=s.top_p, min_p=s.min_p, repetition_penalty=s.repetition_penalty, seed=seed,
            stop=plain_stop(self.tokenizer), cache=self.cache, sampler=sampler, interrupt=interrupt,
            progress=progress), splitter)
        try:
            for r in stream:
                tokens.append(r.token)
                last = r
                yield r
                if stopped_at(len(tokens)):
                    stopped = True
                    break
        except GeneratorExit:  # the caller stopped iterating: a stop like any other
            stopped = True
            raise
        except Interrupted:  # stopped while the prompt was being fed: no reply, and a cache holding part of it
            self.cache, self.cache_tokens = None, []
            stopped = True
        except BaseException:
            self.cache, self.cache_tokens = None, []  # its state is unknown: rebuild it next turn
            stopped = True
            raise
        finally:
            stream.close()  # the cache now holds the prompt and exactly the tokens yielded
            if self.lead is not None:
                self.lead.end()
            if self.cache is not None:
                self.cache_tokens = self.cache_tokens + tokens
            if tokens:
                splitter.finish()  # what a stop left held back (a no-op after the last response)
                message = {"role": "assistant", "content": splitter.answer}
                if splitter.reasoning or splitter.reasoning_tokens:
                    message.update(reasoning_content=splitter.reasoning, reasoning_tokens=splitter.reasoning_tokens)
                if stopped:
                    message["stopped"] = True
                if last is not None:
                    message["stats"] = stats_of(last)
                self.messages.append(message)


def plain_stop(tokenizer) -> Optional[List[str]]:
    """The stop strings of a chat without a template (the turn markers plain_prompt writes)."""
    return None if getattr(tokenizer, "has_chat_template", False) else PLAIN_STOP


def _for_template(m: dict) -> dict:
    """A message as the template sees it: role, content and an assistant's reasoning (not our bookkeeping)."""
    out = {"role": m["role"], "content": m["content"]}
    if m.get("reasoning_content"):
        out["reasoning_content"] = m["reasoning_content"]
    return out


def plain_prompt(messages: List[dict]) -> str:
    """A transcript for models without a chat template (base models)."""
    out = []
    for m in messages:
        if m["role"] == "system":
            out.append(m["content"].strip() + "\n\n")
        else:
            out.append(("User: " if m["role"] == "user" else "Assistant: ") + m["content"].strip() + "\n")
    return "".join(out) + "Assistant:"
