"""Hostile chat files (issue 11, item 6).

Whatever sits in the chats folder, the saved-chats list skips it with a notice and `mlxm chat --open` refuses it
in one line naming the file: absurd values, deep nesting, non-finite settings, gigabytes, FIFOs, symlinks to
devices. Nothing blocks, nothing is read past the bound, special files are never opened. Two windows saving the
same chat never lose a message. In-process where nothing can crash by signal; `--open` of the files that could
block or never end runs as a subprocess with a time bound.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import pytest

from app import cli
from app.chat_store import Chat, ChatFileError, ChatStore
from tests.hostile.cli import mlxm, assert_refused

GOOD_ID = "20240101-000000-aaaaaa"


def chat_text(chat_id: str, **fields) -> str:
    """A valid chat file's JSON for `chat_id`, with `fields` replaced (raw JSON text where a value is a str
    starting with '!')."""
    data = Chat(id=chat_id, messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                settings={"temperature": 0.0}).to_json()
    raw = {}
    for key, value in fields.items():
        if isinstance(value, str) and value.startswith("!"):
            raw[key] = value[1:]
            data[key] = f"@{key}@"
        else:
            data[key] = value
    text = json.dumps(data)
    for key, value in raw.items():
        text = text.replace(f'"@{key}@"', value)
    return text


# name -> (fields replaced in a valid chat, words the refusal must contain)
BAD_VALUES = {
    "huge-time": ({"updated": 1e300}, "impossible 'updated' time"),
    "negative-time": ({"created": -5}, "impossible 'created' time"),
    "year-9999": ({"updated": 253402300799.0}, "impossible 'updated' time"),
    "nan-literal": ({"updated": "!NaN"}, "not valid JSON"),
    "infinity-literal": ({"created": "!Infinity"}, "not valid JSON"),
    "overflowing-number": ({"updated": "!1e999"}, "not valid JSON"),
    "nan-setting": ({"settings": '!{"temperature": NaN}'}, "not valid JSON"),
    "setting-out-of-range": ({"settings": {"top_p": 5}}, "bad setting: top_p"),
    "setting-not-whole": ({"settings": {"max_tokens": 1.5}}, "bad setting: max_tokens"),
    "setting-negative-seed": ({"settings": {"seed": -1}}, "bad setting: seed"),
    "setting-a-string": ({"settings": {"temperature": "hot"}}, "bad setting: temperature"),
    "setting-a-bool": ({"settings": {"top_k": True}}, "bad setting: top_k"),
    "settings-a-list": ({"settings": [1, 2]}, "malformed 'settings'"),
    "deep-nesting": ({"extra": "!" + "[" * 100_000 + "]" * 100_000}, "nests deeper"),
    "nesting-past-bound": ({"extra": "!" + "[" * 100 + "]" * 100}, "nests deeper"),
    "unknown-role": ({"messages": [{"role": "tool", "content": "x"}]}, "malformed messages"),
    "system-role": ({"messages": [{"role": "system", "content": "x"}]}, "malformed messages"),
    "content-a-number": ({"messages": [{"role": "user", "content": 5}]}, "malformed messages"),
    "stopped-a-string": ({"messages": [{"role": "assistant", "content": "x", "stopped": "yes"}]},
                         "malformed messages"),
    "messages-a-dict": ({"messages": {"role": "user"}}, "malformed messages"),
    "title-a-number": ({"title": 7}, "malformed 'title'"),
    "context-start-a-float": ({"context_start": 1.0}, "malformed 'context_start'"),
    "version-true": ({"version": True}, "not a version 1"),
    "version-2": ({"version": 2}, "not a version 1"),
    "other-id": ({"id": "20240101-000000-bbbbbb"}, "holds chat"),
    "id-with-slash": ({"id": "../../etc"}, "no valid id"),
}
BAD_BYTES = {
    "not-utf8": (b'{"version": 1, "id": "\xff\xfe"}', "not UTF-8"),
    "empty": (b"", "not valid JSON"),
    "a-list": (b"[]", "not a version 1"),
    "half-written": (chat_text("x").encode()[:40], "not valid JSON"),
}


def make_bad_folder(folder: Path, tmp_path: Path) -> dict:
    """A chats folder holding one good chat and every kind of bad file; -> {file name: words its refusal has}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{GOOD_ID}.json").write_text(chat_text(GOOD_ID))
    expected = {}
    for i, (name, (fields, words)) in enumerate(BAD_VALUES.items()):
        chat_id = f"bad-{name}"
        (folder / f"{chat_id}.json").write_text(chat_text(chat_id, **fields))
        expected[f"{chat_id}.json"] = words
    for name, (data, words) in BAD_BYTES.items():
        (folder / f"bad-{name}.json").write_bytes(data)
        expected[f"bad-{name}.json"] = words
    expected.update(make_special_files(folder, tmp_path))
    return expected


def make_special_files(folder: Path, tmp_path: Path) -> dict:
    """Files that must be refused without being opened (or read past the bound)."""
    outside = tmp_path / "elsewhere.json"
    outside.write_text(chat_text("sp-symlink-to-chat"))
    os.mkfifo(folder / "sp-fifo.json")
    os.symlink("/dev/zero", folder / "sp-dev-zero.json")
    os.symlink(outside, folder / "sp-symlink-to-chat.json")
    os.symlink(folder / "nowhere", folder / "sp-dangling.json")
    (folder / "sp-folder.json").mkdir()
    with open(folder / "sp-gigabytes.json", "wb") as f:  # sparse: 3 GB that take no disk
        f.truncate(3 << 30)
    (folder / "evil\x1b]0;pwned\x07.json").write_text(chat_text("x"))  # not a chat id: control characters
    return {"sp-fifo.json": "special file", "sp-dev-zero.json": "special file",
            "sp-symlink-to-chat.json": "special file", "sp-dangling.json": "special file",
            "sp-folder.json": "special file", "sp-gigabytes.json": "larger than 32 MB",
            "evil\x1b]0;pwned\x07.json": "not a chat id"}


def bounded(fn, seconds: float = 20.0):
    """fn() in a thread, failing the test (not hanging it) if it takes longer than `seconds`."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # handed to the test below
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds}s (blocked on a FIFO? reading a device?)"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture
def opened(monkeypatch):
    """The paths opened for reading while the test runs (os.open, which every file read here goes through)."""
    seen = []
    real = os.open

    def spy(path, flags, *args, **kwargs):
        if not flags & (os.O_WRONLY | os.O_RDWR):
            seen.append(os.path.basename(os.fspath(path)))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    return seen


def test_the_list_skips_every_bad_file_and_opens_no_special_one(data_dir, tmp_path, opened):
    store = ChatStore()
    expected = make_bad_folder(store.folder, tmp_path)
    tic = time.monotonic()
    chats, skipped = bounded(store.list)
    assert time.monotonic() - tic < 10
    assert [c.id for c in chats] == [GOOD_ID]
    assert skipped == sorted(expected)
    special = {"sp-fifo.json", "sp-dev-zero.json", "sp-symlink-to-chat.json", "sp-dangling.json", "sp-folder.json"}
    assert not special & set(opened), "a special file was opened"


@pytest.mark.parametrize("name", [*BAD_VALUES, *BAD_BYTES, "sp-symlink-to-chat", "sp-folder", "sp-dangling"])
def test_open_refuses_in_one_line_naming_the_file(name, data_dir, tmp_path, capsys):
    expected = make_bad_folder(ChatStore().folder, tmp_path)
    chat_id = name if name.startswith("sp-") else f"bad-{name}"
    assert bounded(lambda: cli.main(["chat", "--open", chat_id])) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlxm: error: "), lines
    assert f"{chat_id}.json" in lines[0] and expected[f"{chat_id}.json"] in lines[0], lines[0]
    assert "fix or delete the file" in lines[0]


@pytest.mark.parametrize("name", ["sp-fifo", "sp-dev-zero", "sp-gigabytes"])
def test_open_of_a_file_that_never_ends_is_refused_at_once(name, data_dir, tmp_path):
    folder = ChatStore().folder
    folder.mkdir(parents=True)
    expected = make_special_files(folder, tmp_path)
    run = mlxm(["chat", "--open", name], timeout=60)
    assert_refused(run, f"{name}.json", expected[f"{name}.json"], within=15)


def test_ids_that_name_other_files_are_refused(data_dir, capsys):
    for chat_id in ("../../etc/passwd", "/etc/passwd", ".hidden", "a\x00b", "x" * 300, "a b"):
        assert cli.main(["chat", "--open", chat_id]) == 1
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and "is not a chat id" in lines[0], lines


def test_the_list_screen_shows_a_hostile_folder_without_crashing(data_dir, tmp_path):
    """The saved-chats dialog over the bad folder: one chat listed, the rest named in a note without their control
    characters; titles with markup and escape sequences are shown as text (a '[/b]' title used to crash it)."""
    from textual.app import App

    from app.tui_screens import ChatListScreen

    store = ChatStore()
    expected = make_bad_folder(store.folder, tmp_path)
    store.save(Chat(title="[/b] not [red]markup\x1b]0;pwned\x07", messages=[{"role": "user", "content": "x"}]))

    class Host(App):
        def on_mount(self):
            self.push_screen(ChatListScreen(store))

    async def scenario():
        app = Host()
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.pause()
            screen = app.screen
            assert len(screen.chats) == 2 and screen.chats[0].title.startswith("[/b] not [red]markup\ufffd]0;pwned")
            note = str(screen.query_one("#note").render())
            assert f"Skipped {len(expected)} damaged file(s)" in note and "\x1b" not in note and "more" in note
            await pilot.press("escape")

    bounded(lambda: asyncio.run(scenario()), 60)


# ---------------------------------------------------------------- two windows, one chat


def saved_chat(store: ChatStore) -> Chat:
    chat = Chat(messages=[{"role": "user", "content": "first"}, {"role": "assistant", "content": "one"}])
    store.save(chat)
    return chat


def reply(chat: Chat, text: str) -> None:
    chat.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]


def all_messages(store: ChatStore) -> list:
    chats, skipped = store.list()
    assert skipped == []
    return [m["content"] for c in chats for m in store.load(c.id).messages]


def test_two_windows_keep_both_versions(data_dir):
    original = saved_chat(ChatStore())
    a, b = ChatStore(), ChatStore()  # two windows (separate processes, as far as the store knows)
    in_a, in_b = a.load(original.id), b.load(original.id)
    reply(in_b, "from b")
    assert b.save(in_b).forked_from is None  # b was first: it saves in place
    reply(in_a, "from a")
    saved = a.save(in_a)
    assert saved.forked_from == original.id and in_a.id != original.id and saved.path.stem == in_a.id
    assert [m["content"] for m in ChatStore().load(original.id).messages][-2] == "from b"  # b's untouched
    assert [m["content"] for m in ChatStore().load(in_a.id).messages][-2] == "from a"
    reply(in_a, "again from a")
    assert a.save(in_a).forked_from is None  # a's copy is its own now
    assert sorted(all_messages(ChatStore())).count("first") == 2


def test_one_window_saving_again_and_again_never_forks(data_dir):
    store = ChatStore()
    chat = saved_chat(store)
    for i in range(5):
        reply(chat, f"turn {i}")
        assert store.save(chat).forked_from is None
    assert len(store.list()[0]) == 1


def test_a_new_chat_never_overwrites_a_file_with_its_id(data_dir):
    store = ChatStore()
    there = saved_chat(store)
    clash = Chat(id=there.id, messages=[{"role": "user", "content": "mine"}])
    assert store.save(clash).forked_from == there.id and clash.id != there.id
    assert store.load(there.id).messages[0]["content"] == "first"


def test_a_chat_deleted_elsewhere_is_saved_again(data_dir):
    store = ChatStore()
    chat = saved_chat(store)
    ChatStore().delete(chat.id)
    reply(chat, "still here")
    assert store.save(chat).forked_from is None and store.load(chat.id).messages[-2]["content"] == "still here"


def test_simultaneous_saves_lose_nothing(data_dir):
    """Eight windows save the same chat at the same moment: the check and the replace happen under one lock,
    so every window's message survives (in the original file or a new chat)."""
    original = saved_chat(ChatStore())
    windows = [ChatStore() for _ in range(8)]
    chats = [w.load(original.id) for w in windows]
    start = threading.Barrier(len(windows))

    def save(i):
        reply(chats[i], f"window {i}")
        start.wait()
        windows[i].save(chats[i])

    threads = [threading.Thread(target=save, args=(i,)) for i in range(len(windows))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    found = all_messages(ChatStore())
    assert all(f"window {i}" in found for i in range(len(windows)))
    assert len(ChatStore().list()[0]) == len(windows)


def test_a_bad_file_is_never_shown_as_a_chat_by_load(data_dir, tmp_path):
    """The store's own API refuses too (the TUI opens chats through it)."""
    store = ChatStore()
    make_bad_folder(store.folder, tmp_path)
    for name in BAD_VALUES:
        with pytest.raises(ChatFileError, match="fix or delete the file"):
            store.load(f"bad-{name}")
    assert store.load(GOOD_ID).messages[1]["content"] == "hello"


def test_saving_never_writes_through_a_planted_link(data_dir, tmp_path):
    """The temporary file and the lock are created where they are named, never through a symlink or into a FIFO
    someone left there: a save either works or fails with an OSError (shown in the app), and writes nothing
    outside the chats folder."""
    store = ChatStore()
    chat = saved_chat(store)
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched")
    (store.folder / f".{chat.id}.{os.getpid()}.tmp").symlink_to(outside)
    reply(chat, "through the link?")
    store.save(chat)
    assert outside.read_text() == "untouched" and store.load(chat.id).messages[-2]["content"] == "through the link?"

    lock = store.folder / ".lock"
    for plant in (lambda: lock.symlink_to(outside), lambda: os.mkfifo(lock)):
        lock.unlink()
        plant()
        with pytest.raises(OSError):
            bounded(lambda: store.save(chat))
        assert outside.read_text() == "untouched"
