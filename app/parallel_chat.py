"""`mlxm chat --parallel MODE` under mlx.launch: the chat's TUI runs on rank 0 only; the other ranks hold their
share of the model and replay each turn rank 0 sends them.

A turn is what rank 0's ChatSession decided (app/chat_session.py): how many cached tokens it kept (`reused`),
the tokens to feed and the reply's length bound. A follower keeps a cache of its own shaped like rank 0's
(rewound to `reused`, or new when it is 0), feeds the same tokens, and follows rank 0's sampled tokens and its
stop request (distributed/follow.Stoppable), so that every rank runs the same forward passes. Everything else in
the chat (messages, templates, sampling settings, saved chats) lives on rank 0; a follower needs only the tokens.
Switching models inside the chat is refused: every rank would have to load the new one.
"""

from __future__ import annotations

from typing import Callable

from mlxmodels.config import ModelError


class Lead:
    """Rank 0's side: ChatSession calls `begin` before each reply, `stopped(n)` after its n-th token and `end`
    after it; `quit` lets the followers go when the chat ends."""

    def __init__(self, run):
        self.run = run
        self._stops = None

    def begin(self, feed: list, reused: int, max_tokens: int, sampler: Callable, asked: Callable[[], bool]):
        """Send the turn; -> the sampler for rank 0's stream_generate: `sampler`'s token and the stop request
        (`asked()`) reach every rank."""
        from mlxmodels.distributed.follow import Stoppable, share_tokens

        share_tokens(self.run.group, [reused, max_tokens, *feed])
        self.run.watchdog.arm()
        self._stops = Stoppable(sampler, self.run.group, asked, self.run.watchdog.pet)
        return self._stops

    def stopped(self, n: int) -> bool:
        return self._stops.stopped(n)

    def end(self) -> None:
        self.run.watchdog.disarm()  # the chat now waits on a person, not on a rank

    def quit(self) -> None:
        from mlxmodels.distributed.follow import share_tokens

        self.run.watchdog.disarm()
        share_tokens(self.run.group, [])


def follow(run, model, tokenizer, cache_options: dict, stop) -> None:
    """A follower's chat: replay rank 0's turns until it quits. `stop`: the stop strings rank 0's session uses."""
    import mlxmodels
    from mlxmodels.distributed.follow import Stoppable, share_tokens
    from mlxmodels.generate import greedy

    cache, held = None, 0
    while True:
        message = share_tokens(run.group, [])  # blocks while rank 0's person types
        if not message:
            return
        run.watchdog.arm()
        reused, max_tokens, feed = message[0], message[1], message[2:]
        if cache is None or reused == 0:
            cache = model.make_cache(**cache_options)
        elif held > reused:
            for c in cache:
                c.trim(held - reused)
        stops = Stoppable(greedy, run.group, tick=run.watchdog.pet)  # its own draw is never used: rank 0's is
        stream = mlxmodels.stream_generate(model, tokenizer, feed, max_tokens=max_tokens, stop=stop, cache=cache,
                                           sampler=stops, progress=run.watchdog.pet)
        n = 0
        try:
            for n, _ in enumerate(stream, start=1):
                if stops.stopped(n):
                    break
        finally:
            stream.close()
        held = reused + len(feed) + n
        run.watchdog.disarm()


def refuse_switch(name: str, **_):
    raise ModelError("switching models needs every rank to load the new one; quit and start mlx.launch again "
                     f"with -m {name}")
