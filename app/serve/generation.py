"""One request's reply as it is made: the engine's events through the ReplyParser, as pieces the wire format sends.

A stop string met by the parser cancels the engine's stream (the tokens it still sends are dropped); the reply's
finish reason is then "stop". A stream the engine cancelled on its own (the server shutting down) or ended with an
error leaves `error` set: the caller reports it instead of a finish reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, List, Optional, Tuple

from .errors import RequestError
from .reply import Delta, ReplyParser


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: List[Tuple[int, float]]  # most probable first


@dataclass
class Piece:
    delta: Delta
    logprob: Optional[TokenLogprob] = None  # the token this piece came from, when logprobs were asked for


class Generation:
    """Iterate (async) for the pieces; afterwards `finish_reason` or `error`, and `completion_tokens`."""

    def __init__(self, stream, parser: ReplyParser, logprobs: bool):
        self.stream, self.parser, self.logprobs = stream, parser, logprobs
        self.completion_tokens = 0
        self.finish_reason: Optional[str] = None  # "stop" | "length" | "tool_calls"
        self.error: Optional[RequestError] = None

    async def __aiter__(self) -> AsyncIterator[Piece]:
        ended = None
        try:
            async for event in self.stream:
                if event.token >= 0 and not self.parser.stopped:
                    self.completion_tokens += 1
                    delta = self.parser.feed(event.token)
                    if self.parser.stopped:
                        self.stream.cancel()
                    logprob = (TokenLogprob(event.token, event.logprob, event.top_logprobs or [])
                               if self.logprobs and event.logprob is not None else None)
                    yield Piece(delta, logprob)
                ended = event
        finally:
            self.stream.cancel()  # a client gone, or an error: the engine frees the sequence (no-op once finished)
        yield Piece(self.parser.finish())
        self._settle(ended)

    def _settle(self, event) -> None:
        reason = event.finish_reason if event is not None else "error"
        if self.parser.stopped or reason in ("stop", "length"):
            self.finish_reason = "tool_calls" if self.parser.tool_calls else ("stop" if self.parser.stopped
                                                                              else reason)
        elif reason == "cancelled":
            self.error = RequestError("the server is shutting down; the reply was cut short", status=503)
        else:
            self.error = RequestError(f"generation failed: {event.error if event is not None else 'no reply'}",
                                      status=500)
