"""Saved chats: atomic saves, damaged files never loaded, the previous version survives a crash."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.chat_store import Chat, ChatFileError, ChatStore
from app.chat_store import data_dir as user_data_dir

ROOT = Path(__file__).resolve().parents[2]


def chat(text="hello", **kw):
    return Chat(messages=[{"role": "user", "content": text}, {"role": "assistant", "content": "hi!"}], **kw)


def test_data_dir_env_override(data_dir):
    assert user_data_dir() == data_dir  # the fixture set MLXM_DATA_DIR
    assert ChatStore().folder == data_dir / "chats"


def test_round_trip_and_list_newest_first():
    store = ChatStore()
    a, b = chat("first"), chat("second", system="be brief", settings={"temperature": 0.5})
    store.save(a)
    store.save(b)
    loaded = store.load(b.id)
    assert loaded.messages == b.messages and loaded.system == "be brief" and loaded.settings == {"temperature": 0.5}
    chats, skipped = store.list()
    assert [c.id for c in chats] == [b.id, a.id] and skipped == []
    assert chats[0].title == "second" and chats[0].messages == 2
    store.delete(a.id)
    assert [c.id for c in store.list()[0]] == [b.id]


def test_failed_save_keeps_previous_version(monkeypatch):
    store = ChatStore()
    c = chat("version one")
    store.save(c)
    c.messages[0]["content"] = "version two"

    def crash(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.save(c)
    monkeypatch.undo()
    assert store.load(c.id).messages[0]["content"] == "version one"
    assert not list(store.folder.glob(".*.tmp"))  # the temporary file was cleaned up


CRASH = r"""
import os, signal, sys
from app.chat_store import ChatStore
store = ChatStore()
chat = store.load(sys.argv[1])
chat.messages[0]["content"] = "version two " * 1000
real_fsync = os.fsync
def die(fd):  # only half of the new file reached the disk, then the process was killed
    size = os.fstat(fd).st_size
    os.ftruncate(fd, size // 2)
    os.kill(os.getpid(), signal.SIGKILL)
os.fsync = die
store.save(chat)
"""


def test_killed_during_save_never_loads_half_a_file(data_dir):
    store = ChatStore()
    c = chat("version one")
    store.save(c)
    env = dict(os.environ, MLXM_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", CRASH, c.id], env=env, cwd=ROOT)
    assert proc.returncode == -9
    leftovers = list(store.folder.glob(".*.tmp"))
    assert len(leftovers) == 1  # the half-written temporary file a crash leaves behind
    with pytest.raises(json.JSONDecodeError):
        json.loads(leftovers[0].read_text())
    chats, skipped = store.list()
    assert [x.id for x in chats] == [c.id] and skipped == []
    assert store.load(c.id).messages[0]["content"] == "version one"


def test_half_written_chat_file_is_skipped_not_loaded():
    store = ChatStore()
    good = chat("kept")
    store.save(good)
    text = json.dumps(chat("broken").to_json())
    (store.folder / "20240101-000000-abcdef.json").write_text(text[: len(text) // 2])
    (store.folder / "20240101-000000-badbad.json").write_text(json.dumps({"version": 1, "id": "x", "messages": 3}))
    chats, skipped = store.list()
    assert [x.id for x in chats] == [good.id]
    assert skipped == ["20240101-000000-abcdef.json", "20240101-000000-badbad.json"]
    with pytest.raises(ChatFileError, match="not valid JSON"):
        store.load("20240101-000000-abcdef")
    with pytest.raises(ChatFileError, match="malformed messages"):
        store.load("20240101-000000-badbad")


def test_bad_ids_are_refused():
    with pytest.raises(ChatFileError):
        ChatStore().load("../etc/passwd")
    with pytest.raises(ChatFileError, match="no saved chat"):
        ChatStore().load("nope")


def test_platform_data_folders(monkeypatch, tmp_path):
    import app.chat_store as cs

    monkeypatch.delenv("MLXM_DATA_DIR")
    monkeypatch.setattr(cs.Path, "home", staticmethod(lambda: tmp_path))
    monkeypatch.setattr(cs.sys, "platform", "darwin")
    assert user_data_dir() == tmp_path / "Library" / "Application Support" / "mlxmodels"
    monkeypatch.setattr(cs.sys, "platform", "linux")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert user_data_dir() == tmp_path / ".local" / "share" / "mlxmodels"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert user_data_dir() == tmp_path / "xdg" / "mlxmodels"


STATS = {"prompt_tokens": 12, "prompt_tps": 310.5, "generation_tokens": 40, "generation_tps": 52.25, "ttft": 0.04}


def reply_with(stats) -> Chat:
    return Chat(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello", "stats": stats}])


def test_reply_stats_round_trip():
    store = ChatStore()
    c = reply_with(dict(STATS))
    store.save(c)
    assert store.load(c.id).messages[1]["stats"] == STATS


@pytest.mark.parametrize("stats", [
    [], "fast", None, {}, {**STATS, "extra": 1}, {k: v for k, v in STATS.items() if k != "ttft"},
    {**STATS, "prompt_tokens": "12"}, {**STATS, "prompt_tokens": 12.0}, {**STATS, "generation_tokens": True},
    {**STATS, "generation_tokens": -1}, {**STATS, "generation_tokens": 2 ** 53}, {**STATS, "prompt_tps": -0.5},
    {**STATS, "generation_tps": 1e300}, {**STATS, "ttft": 1e8}, {**STATS, "ttft": None}, {**STATS, "ttft": False},
])
def test_reply_stats_not_as_we_write_them_are_a_damaged_file(stats):
    store = ChatStore()
    c = reply_with(stats)
    store.folder.mkdir(parents=True, exist_ok=True)
    (store.folder / f"{c.id}.json").write_text(json.dumps(c.to_json()))
    with pytest.raises(ChatFileError, match="malformed messages"):
        store.load(c.id)
    assert store.list() == ([], [f"{c.id}.json"])


def test_non_finite_stats_are_a_damaged_file():
    store = ChatStore()
    c = reply_with({**STATS, "prompt_tps": float("nan")})
    store.folder.mkdir(parents=True, exist_ok=True)
    (store.folder / f"{c.id}.json").write_text(json.dumps(c.to_json()))  # Python writes NaN, other tools may too
    with pytest.raises(ChatFileError):
        store.load(c.id)


def test_stats_on_a_user_message_are_a_damaged_file():
    store = ChatStore()
    c = Chat(messages=[{"role": "user", "content": "hi", "stats": dict(STATS)}])
    store.folder.mkdir(parents=True, exist_ok=True)
    (store.folder / f"{c.id}.json").write_text(json.dumps(c.to_json()))
    with pytest.raises(ChatFileError, match="malformed messages"):
        store.load(c.id)


def test_list_shows_model_and_first_line_safely():
    store = ChatStore()
    titled = chat("What is a monad?\nAsk me twice", model="qwen3:8b\x1b[2J", title="Monads")
    untitled = chat("x" * 300, model="tiny")
    store.save(titled)
    store.save(untitled)
    by_id = {c.id: c for c in store.list()[0]}
    assert by_id[titled.id].model == "qwen3:8b\ufffd[2J"  # no escape sequence reaches the terminal
    assert by_id[titled.id].first_line == "What is a monad?" and by_id[titled.id].title == "Monads"
    assert by_id[untitled.id].title == "x" * 47 + "…" and by_id[untitled.id].first_line == "x" * 199 + "…"
