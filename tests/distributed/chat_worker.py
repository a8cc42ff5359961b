"""One rank of `mlxm chat --parallel MODE ...` (the arguments after this script's name) under mlx.launch, for
test_chat.py. Rank 0's TUI runs headless through Textual's pilot and sends MESSAGES, the second stopped with Esc
after its third token (rank 0 waits there for the key); every rank records the tokens of each turn it generated."""

import sys

import mlxmodels  # noqa: F401  (first: it picks the BLAS before mlx.core loads)

from app import cli, tui
from tests.app.pilot import SIZE, run, send, type_text, until
from tests.distributed.harness import write_result

MESSAGES = ["Hello there", "Tell me more", "And again"]
STOP_AT = 3  # Esc once the second reply has this many tokens
APP = []  # rank 0's ChatApp
turns = []  # the tokens of each turn this rank generated
stream_generate = mlxmodels.stream_generate


def recording(*args, **kwargs):
    turns.append([])
    for r in stream_generate(*args, **kwargs):
        turns[-1].append(r.token)
        if APP and len(turns) == 2 and len(turns[1]) == STOP_AT:  # rank 0 waits for its Esc: a stop mid-reply
            APP[0].session._stop.wait(30)
        yield r


replies = []


async def scenario(app):
    APP.append(app)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, MESSAGES[0])
        before = app.turns
        await type_text(pilot, MESSAGES[1])
        await pilot.press("enter")
        await until(pilot, lambda: len(turns) == 2 and len(turns[1]) >= STOP_AT)
        await pilot.press("escape")
        await until(pilot, lambda: app.turns > before and not app.generating)
        await send(pilot, MESSAGES[2])
        replies.extend(m for m in app.session.messages if m["role"] == "assistant")
        await pilot.press("ctrl+q")


if __name__ == "__main__":
    tui.ChatApp.run = lambda self: run(scenario(self))
    mlxmodels.stream_generate = recording
    rc = cli.main(sys.argv[1:])
    write_result({"rc": rc, "turns": turns, "replies": replies})
    sys.exit(rc)
