"""A chat's branches: editing an earlier message keeps the turns it replaces instead of deleting them.

Each branch is a whole other version of the conversation ({"messages": [...], "context_start": int} in
Chat.branches), not a tail hung on an index: a later edit further up cannot leave a branch pointing into messages
that changed. Where a branch forks is worked out when it is listed, as the messages it shares with the current
version. Switching swaps the two: the current version becomes a branch in turn. The model's cache is kept by
ChatSession across the swap and rewound to the prompt's common prefix, so a switch re-feeds only what follows the
fork. At most chat_store.MAX_BRANCHES are kept; the oldest goes first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

from app.chat_store import MAX_BRANCHES, Chat, printable


@dataclass(frozen=True)
class Branch:
    """One branch as listed: `fork` messages are shared with the current version; `first_line` is the first line
    of the first message after them ("" when the branch ends there); `messages` counts the branch's own."""

    index: int
    fork: int
    first_line: str
    messages: int


def fork_point(a: List[dict], b: List[dict]) -> int:
    """How many leading messages two versions share (role and text)."""
    n = 0
    for x, y in zip(a, b):
        if (x["role"], x["content"]) != (y["role"], y["content"]):
            break
        n += 1
    return n


def keep(chat: Chat, messages: List[dict], context_start: int) -> None:
    """Keep `messages` (the chat before an edit) as a branch, if it has a reply the edit loses; the oldest branch
    goes when there are too many."""
    lost = messages[fork_point(messages, chat.messages):]
    if not any(m["role"] == "assistant" for m in lost):
        return
    chat.branches.append({"messages": [dict(m) for m in messages], "context_start": context_start})
    del chat.branches[:-MAX_BRANCHES]


def listing(chat: Chat) -> List[Branch]:
    """The chat's branches, newest first, each with where it forks from the current version."""
    out = []
    for i in reversed(range(len(chat.branches))):
        msgs = chat.branches[i]["messages"]
        fork = fork_point(msgs, chat.messages)
        text = msgs[fork]["content"].strip() if fork < len(msgs) else ""
        out.append(Branch(i, fork, printable(text.splitlines()[0]) if text else "", len(msgs)))
    return out


def switch(chat: Chat, index: int) -> int:
    """Make branch `index` the current version and the current version a branch (the newest); -> the fork."""
    if not 0 <= index < len(chat.branches):
        raise ValueError(f"there is no branch {index}")
    branch = chat.branches.pop(index)
    fork = fork_point(branch["messages"], chat.messages)
    chat.branches.append({"messages": chat.messages, "context_start": chat.context_start})
    chat.messages, chat.context_start = [dict(m) for m in branch["messages"]], branch["context_start"]
    return fork
