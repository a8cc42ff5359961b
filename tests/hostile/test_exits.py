"""Leaving `mlxm chat` and interrupting `mlxm` (issue 11, item 7; the crash clause of item 6).

The real app runs in a pseudo-terminal with the built-in default model: Ctrl+Q, Ctrl+C twice, SIGHUP, SIGTERM,
SIGINT and a closed terminal, while idle, mid-reply (sampling at temperature 5 streams ~1000 tokens of noise) and
right after a reply, must exit 0 every time, never "terminate called without an active exception" (MLX state torn
down by the interpreter while a thread still owned it) and never a traceback; a reply cut short is saved, marked
stopped. Ctrl+C while `mlxm` imports or loads prints one line and exits 130. An unexpected exception ends the app
with status 1, one line naming a log file, and the saved chats intact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import cli
from app.chat_store import Chat, ChatStore
from app.tui import QUIT_WAIT
from tests.hostile.cli import ROOT, assert_refused, mlxm
from tests.hostile.terminal import CTRL_C, CTRL_Q, Terminal

NOISE = ["--temp", "5", "--seed", "2", "--max-tokens", "5000"]  # ~1000 sampled tokens: seconds of streaming
READY = "in an empty input, quits"  # the end of the help line: the app is up


def chat_in_terminal(*args: str) -> Terminal:
    env = {**os.environ, "TERM": "xterm-256color", "HF_HUB_OFFLINE": "1"}
    t = Terminal([sys.executable, "-m", "app.cli", "chat", *args], env, cwd=str(ROOT))
    try:
        t.wait_for(READY, 60)
    except BaseException:
        t.close()
        raise
    return t


def saved_replies(data_dir: Path) -> list:
    return [m for f in (data_dir / "chats").glob("*.json")
            for m in json.loads(f.read_text())["messages"] if m["role"] == "assistant"]


def assert_left_cleanly(t: Terminal) -> None:
    rc = t.wait(QUIT_WAIT + 30)  # a busy machine may take the app's whole bounded wait for its worker
    assert "terminate called" not in t.screen and "Traceback" not in t.screen, t.screen[-2000:]
    assert rc == 0, f"exit status {rc}; the screen:\n{t.screen[-2000:]}"


def mid_reply(t: Terminal) -> None:
    t.keys("Tell me a long story\r")
    t.wait_for("Assistant", 30)  # the reply's box: tokens are streaming


def quit_keys(t: Terminal) -> None:
    t.keys(CTRL_Q)


def ctrl_c_twice(t: Terminal) -> None:
    t.keys(CTRL_C)  # stops the reply, and arms the second one
    time.sleep(0.2)
    t.keys(CTRL_C)


LEAVE = {
    "ctrl+q": quit_keys,
    "ctrl+c twice": ctrl_c_twice,
    "SIGHUP": lambda t: t.signal(signal.SIGHUP),
    "SIGTERM": lambda t: t.signal(signal.SIGTERM),
    "SIGINT": lambda t: t.signal(signal.SIGINT),
    "terminal closed": lambda t: t.hang_up(),
}


@pytest.mark.parametrize("attempt", range(2))
@pytest.mark.parametrize("how", ["ctrl+q", "ctrl+c twice", "SIGHUP", "SIGTERM"])
def test_leaving_while_idle(how, attempt, data_dir):
    with chat_in_terminal() as t:
        LEAVE[how](t)
        assert_left_cleanly(t)


# every way out twice, the commonest three times (the abort struck most of a dozen tries)
MID_REPLY = [(how, attempt) for how in LEAVE for attempt in range(3 if how in ("ctrl+q", "terminal closed") else 2)]


@pytest.mark.parametrize("how, attempt", MID_REPLY)
def test_leaving_mid_reply_saves_it_stopped(how, attempt, data_dir):
    with chat_in_terminal(*NOISE) as t:
        mid_reply(t)
        LEAVE[how](t)
        assert_left_cleanly(t)
    replies = saved_replies(data_dir)
    assert len(replies) == 1 and replies[0].get("stopped") is True and replies[0]["content"]


@pytest.mark.parametrize("attempt", range(3))
def test_leaving_right_after_a_reply(attempt, data_dir):
    with chat_in_terminal("--max-tokens", "64") as t:
        t.keys("hello\r")
        deadline = time.monotonic() + 30
        while not saved_replies(data_dir):  # the reply ended and was saved: leave at once
            assert time.monotonic() < deadline, t.screen[-2000:]
            time.sleep(0.01)
        quit_keys(t)
        assert_left_cleanly(t)
    replies = saved_replies(data_dir)
    assert len(replies) == 1 and "stopped" not in replies[0]


def test_chat_refuses_to_run_without_a_terminal(data_dir):
    assert_refused(mlxm(["chat"], stdin=b"hello\n"), "needs a terminal", within=20)


# ---------------------------------------------------------------- interrupted while starting

# Runs `mlxm ARGS` and sends itself SIGINT the moment module WHEN is first imported: during `import mlxmodels`
# (mlx.core), the parser's imports (app.convert_cmd), or loading the model (tokenizers, imported by the loader).
INTERRUPT_AT_IMPORT = r"""
import os, signal, sys

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == WHEN:
            os.kill(os.getpid(), signal.SIGINT)
        return None

WHEN = sys.argv[1]
sys.meta_path.insert(0, Interrupt())
from app.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("when", ["mlx.core", "app.convert_cmd", "tokenizers"])
@pytest.mark.parametrize("command", [["chat"], ["generate", "-p", "hi"]])
def test_interrupted_while_starting_prints_one_line(command, when, data_dir):
    p = subprocess.run([sys.executable, "-c", INTERRUPT_AT_IMPORT, when, *command], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 130, p.stderr[-2000:]
    assert p.stderr.splitlines() == ["mlxm: interrupted"], p.stderr[-2000:]


def test_interrupted_while_generating_prints_one_line(data_dir):
    p = subprocess.Popen([sys.executable, "-m", "app.cli", "generate", "-p", "hi", *NOISE], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        assert p.stdout.read(1)  # it is generating
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 130 and err.decode().splitlines() == ["mlxm: interrupted"], err[-2000:]


# ---------------------------------------------------------------- a bug in the app


@pytest.mark.parametrize("where", ["a key's action", "a streamed token's handler"])
def test_a_crash_exits_1_in_one_line_and_keeps_the_saved_chats(where, data_dir, monkeypatch, capsys):
    """An exception nothing handles (in a key's action while idle, or in a handler while a reply streams in the
    MLX thread) ends the app with status 1 and one line naming crash.log, which holds the traceback."""
    from textual.app import App

    from app.tui import ChatApp
    from app.tui_widgets import ChatInput

    kept = Chat(messages=[{"role": "user", "content": "keep me"}, {"role": "assistant", "content": "kept"}])
    ChatStore().save(kept)

    def boom(*args, **kwargs):
        raise RuntimeError(f"boom in {where}")

    async def auto_pilot(pilot):  # (pilot.press would wait 30 s for the screen of an app that has ended)
        if where == "a key's action":
            pilot.app.call_later(pilot.app.run_action, "new_chat")  # as Ctrl+N does
        else:
            pilot.app.query_one(ChatInput).post_message(ChatInput.Submitted("hi"))  # as typing hi + Enter does

    monkeypatch.setattr(ChatApp, "action_new_chat" if where == "a key's action" else "on_chat_app_piece", boom)

    monkeypatch.setattr(ChatApp, "run", lambda self: App.run(self, headless=True, auto_pilot=auto_pilot, size=(90, 30)))
    with pytest.raises(SystemExit) as leaving:
        cli.main(["chat", *NOISE])
    assert leaving.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    log = data_dir / "crash.log"
    assert len(lines) == 1 and f"boom in {where}" in lines[0] and str(log) in lines[0], lines
    assert "Traceback" in log.read_text() and f"boom in {where}" in log.read_text()
    chats, skipped = ChatStore().list()
    assert skipped == [] and ChatStore().load(kept.id).messages == kept.messages
