"""OpenAI's response objects: chat completions and text completions, whole or as stream chunks, usage, logprobs.

A token's text for logprobs is its own decoding (special tokens as written), its `bytes` that text's UTF-8; a token
holding part of a character decodes to U+FFFD, as in llama.cpp's server.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import List, Optional

from .generation import Piece, TokenLogprob


class Wire:
    """The objects of one request: its id, creation time and model name are the same in every chunk."""

    def __init__(self, chat: bool, model: str, tokenizer):
        self.chat, self.model, self.tokenizer = chat, model, tokenizer
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self._offset = 0  # completions' text_offset: characters of the reply so far

    def _head(self, chunk: bool) -> dict:
        return {"id": self.id, "object": self.object + (".chunk" if chunk and self.chat else ""),
                "created": self.created, "model": self.model}

    # ---- whole replies
    def completion(self, parser, logprobs: List[TokenLogprob], finish_reason: str, usage: dict) -> dict:
        if self.chat:
            message = {"role": "assistant", "content": parser.content or (None if parser.tool_calls else "")}
            if parser.reasoning:
                message["reasoning_content"] = parser.reasoning
            if parser.tool_calls:
                message["tool_calls"] = parser.tool_calls
            choice = {"index": 0, "message": message}
        else:
            choice = {"index": 0, "text": parser.content}
        choice["logprobs"] = self.logprobs(logprobs) if logprobs else None
        choice["finish_reason"] = finish_reason
        return {**self._head(False), "choices": [choice], "usage": usage}

    # ---- stream chunks (each one SSE event)
    def first_chunk(self) -> Optional[str]:
        """A chat stream opens with the assistant's role, as OpenAI's does."""
        if not self.chat:
            return None
        return self._chunk({"role": "assistant", "content": ""}, [], None)

    def piece_chunk(self, piece: Piece, pending: List[TokenLogprob], finish_reason: Optional[str] = None):
        """The chunk for a piece (None when it carries nothing); logprobs of tokens that gave no text yet wait in
        `pending` and ride with the next chunk."""
        if piece.logprob is not None:
            pending.append(piece.logprob)
        if not piece.delta and finish_reason is None:
            return None
        fields = {}
        if self.chat:
            fields = {k: v for k, v in (("content", piece.delta.content), ("reasoning_content", piece.delta.reasoning),
                                        ("tool_calls", piece.delta.tool_calls)) if v}
        else:
            fields = piece.delta.content
        out = self._chunk(fields, list(pending), finish_reason)
        pending.clear()
        return out

    def usage_chunk(self, usage: dict) -> str:
        return sse({**self._head(True), "choices": [], "usage": usage})

    def _chunk(self, fields, logprobs: List[TokenLogprob], finish_reason: Optional[str]) -> str:
        choice = {"index": 0, "delta": fields} if self.chat else {"index": 0, "text": fields}
        choice["logprobs"] = self.logprobs(logprobs) if logprobs else None
        choice["finish_reason"] = finish_reason
        return sse({**self._head(True), "choices": [choice], "usage": None})

    # ---- logprobs
    def logprobs(self, entries: List[TokenLogprob]) -> dict:
        if self.chat:
            return {"content": [dict(self._token(e.token, e.logprob),
                                     top_logprobs=[self._token(t, lp) for t, lp in e.top]) for e in entries]}
        tokens = [self._text(e.token) for e in entries]
        offsets = []
        for text in tokens:
            offsets.append(self._offset)
            self._offset += len(text)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{self._text(t): lp for t, lp in e.top} for e in entries], "text_offset": offsets}

    def _text(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def _token(self, token: int, logprob: float) -> dict:
        text = self._text(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"
