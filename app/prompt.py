"""The prompt of `mlxm generate`: read as UTF-8 text (from -p, or stdin for `-p -`) and fitted to the model's
context. A mistake in either is one line saying where: the byte and its offset, or both token counts."""

from __future__ import annotations

import sys
from typing import List, Tuple

MAX_STDIN = 64 << 20  # bytes; ~16M tokens, far past any model's context, read no further


def read_prompt(arg: str) -> str:
    """`-p`'s value as given, or stdin's bytes decoded for `-p -`; ValueError names what is not UTF-8."""
    if arg != "-":
        return utf8_arg(arg, "the prompt (-p)")
    if sys.stdin is None:
        raise ValueError("-p - reads the prompt from stdin, but stdin is closed")
    try:
        data = sys.stdin.buffer.read(MAX_STDIN + 1)
    except OSError as e:
        raise ValueError(f"stdin could not be read for -p -: {e.strerror or e}") from None
    if len(data) > MAX_STDIN:
        raise ValueError(f"stdin holds more than {MAX_STDIN >> 20} MB; a prompt is far shorter (-p -)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"stdin is not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} ({e.reason}); "
                         "convert it first, e.g. iconv -f latin1 -t utf-8") from None


def utf8_arg(text: str, what: str) -> str:
    """A command-line value that must be text: bytes that are not UTF-8 reach argv as lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} is not UTF-8 text: byte 0x{ord(text[e.start]) & 0xFF:02x} at character "
                         f"{e.start}; convert it first (or pass the prompt on stdin with -p -)") from None
    return text


def fit_context(ids: List[int], max_tokens: int, context: int, truncate: bool) -> Tuple[List[int], int]:
    """(prompt ids, max tokens) that fit `context` positions: past it a model's positions are undefined (and out of
    range for learned position embeddings, where MLX would read out of bounds). A prompt that leaves no room is an
    error unless `truncate`, which keeps its last tokens: as many as leave room for `max_tokens`, but at least half
    the context. Generation always stops at the context's end."""
    if truncate:
        ids = ids[-max(context - max_tokens, context // 2, 1):]
    if len(ids) >= context:
        raise ValueError(f"the prompt is {len(ids):,} tokens and the model's context is {context:,}: shorten it, "
                         "or pass --truncate-prompt to keep its last tokens")
    return ids, min(max_tokens, context - len(ids))
