"""Saved chats: one JSON file per chat in the user data folder, written atomically, read as untrusted input.

A save writes a temporary file beside the target, flushes it to disk, then renames it over the old file
(`os.replace` is atomic), so a crash at any moment leaves either the old version or the new one, never half of
one. Two windows may have the same chat open: each chat remembers which version of its file it came from, and a
save that finds the file changed since (another window saved it) keeps both, writing this window's version as a
new chat instead of overwriting the other's messages.

Reading trusts nothing in the folder: a file that is not a regular file (a FIFO, a symlink to a device), is larger
than MAX_BYTES, does not parse, nests too deeply, or holds a field of the wrong type or out of range (a timestamp of
1e300, a NaN setting, an unknown role) is never shown as a chat: listing skips it (the UI names it), opening it
refuses it in one line.

The folder: $MLXM_DATA_DIR if set (tests), else the platform's user data folder (as platformdirs places it):
~/Library/Application Support/mlxmodels on macOS, $XDG_DATA_HOME/mlxmodels (~/.local/share/mlxmodels) on Linux,
%APPDATA%\\mlxmodels on Windows. Chats live in its `chats/` subfolder.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import stat
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import List, Optional, Tuple

from app.reply_stats import STATS_KEYS
from mlxmodels.formats.folder import FolderError, read_json

DATA_ENV = "MLXM_DATA_DIR"
VERSION = 1
ROLES = ("user", "assistant")
MAX_BYTES = 32 << 20  # far above any real chat; bounds what one file can make us read and parse
LATEST_TIME = 32503680000.0  # 3000-01-01: later (or non-finite) timestamps are damage, and break time.localtime
ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
LOCK_WAIT = 10.0  # seconds a save waits for another window's save to finish
TEMPLATE_KWARGS = "template_kwargs"  # the key of Chat.settings holding the chat template's switches
KWARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
RESERVED_KWARGS = ("messages", "add_generation_prompt", "tokenize", "tools", "documents")  # set by us, or lists
MAX_KWARGS, MAX_KWARG_TEXT = 32, 1000
MAX_BRANCHES = 16  # earlier versions of a chat kept when a message is edited (app.chat_branches); oldest go first
MAX_RATE, MAX_SECONDS = 1e9, 1e7  # tok/s and seconds in a reply's stats: beyond these a figure is damage

FIX = "the chat was not opened: fix or delete the file"
_NOFOLLOW, _CLOEXEC = getattr(os, "O_NOFOLLOW", 0), getattr(os, "O_CLOEXEC", 0)
# escape sequences, bells, and the bidi overrides that make a name read as another: never sent to the terminal
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e]")


class ChatFileError(ValueError):
    """A chat file that cannot be opened; the message says which and why."""


def data_dir() -> Path:
    env = os.environ.get(DATA_ENV)
    if env:
        try:
            return Path(env).expanduser()
        except RuntimeError:  # ~someone with no such user
            raise ChatFileError(f"{DATA_ENV}={env} names the home folder of a user that does not exist; "
                                "point it at a folder") from None
    home = Path.home()
    if sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    elif os.name == "nt":
        base = Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming")
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / "mlxmodels"


def new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def printable(text: str) -> str:
    """`text` safe to show in the terminal: control characters (escape sequences, bells) become U+FFFD."""
    return _CONTROL.sub("\ufffd", text)


@dataclass
class Sampling:
    """The sampling settings a chat is saved with (`Chat.settings` holds them as a dict)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int = 1024
    seed: Optional[int] = None

    WHOLE = ("top_k", "max_tokens", "seed")

    def check(self) -> "Sampling":
        """Raise ValueError naming the first setting of the wrong type or out of range (NaN and inf included)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "seed":
                continue
            kind = int if f.name in self.WHOLE else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
                expected = "a whole number" if kind is int else "a finite number"
                raise ValueError(f"{f.name} must be {expected}, not {value!r}")
        problems = [
            (self.temperature < 0, "temperature must be >= 0"),
            (not 0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k < 0, "top_k must be >= 0 (0: off)"),
            (not 0 <= self.min_p < 1, "min_p must be in [0, 1)"),
            (self.repetition_penalty <= 0, "repetition penalty must be > 0 (1: off)"),
            (self.max_tokens < 1, "max tokens must be >= 1"),
            (self.seed is not None and not 0 <= self.seed < 2 ** 64, "seed must be in [0, 2**64)"),
        ]
        for bad, message in problems:
            if bad:
                raise ValueError(message)
        return self

    @classmethod
    def from_dict(cls, data: dict) -> "Sampling":
        """The known settings of `data` (others are ignored), checked: ValueError names a bad one."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in (data or {}).items() if k in known}
        for k in cls.WHOLE:  # 50.0 from a generation_config.json means 50
            if isinstance(values.get(k), float) and values[k].is_integer():
                values[k] = int(values[k])
        return cls(**values).check()

    def to_dict(self) -> dict:
        return asdict(self)


def check_template_kwargs(value) -> dict:
    """Switches for the chat template (`enable_thinking`, `reasoning_effort`, ...): names to JSON scalars (true/false,
    a whole or finite number, a short string, null). Raise ValueError naming the first bad one."""
    if not isinstance(value, dict):
        raise ValueError(f"template switches must be a JSON object of names to values, not {type(value).__name__}")
    if len(value) > MAX_KWARGS:
        raise ValueError(f"there are {len(value)} template switches; at most {MAX_KWARGS} are allowed")
    for name, v in value.items():
        if not isinstance(name, str) or not KWARG_NAME.fullmatch(name) or name in RESERVED_KWARGS:
            raise ValueError(f"{printable(repr(name)[:80])} is not a template switch name (a name like "
                             f"enable_thinking; not {', '.join(RESERVED_KWARGS)})")
        if name == "enable_thinking" and not isinstance(v, bool):  # the chat's Thinking setting shows it as on/off
            raise ValueError(f"template switch 'enable_thinking' must be true or false, not {printable(repr(v)[:80])}")
        if v is None or isinstance(v, bool) or (isinstance(v, str) and len(v) <= MAX_KWARG_TEXT):
            continue
        if not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
            raise ValueError(f"template switch {name!r} must be true/false, a finite number, a string of at most "
                             f"{MAX_KWARG_TEXT} characters or null, not {printable(repr(v)[:80])}")
    return dict(value)


@dataclass
class Chat:
    """A conversation as saved. `messages`: {"role": "user"|"assistant", "content": str[, "stopped": True]}; an
    assistant message of a thinking model also has "reasoning_content" (its reasoning, what templates read back) and
    "reasoning_tokens" (how many tokens it took), and a finished reply "stats" (app.reply_stats). `settings`: Sampling's fields, and TEMPLATE_KWARGS. Messages
    before `context_start` were dropped from the model's context (the conversation outgrew it). `branches`: the
    chat's other versions, kept when an earlier message was edited (app.chat_branches)."
    `disk`: the identity of the file version this chat was loaded from or last saved as (not saved)."""

    id: str = field(default_factory=new_id)
    title: str = ""
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    model: str = ""
    system: str = ""
    settings: dict = field(default_factory=dict)
    messages: List[dict] = field(default_factory=list)
    context_start: int = 0
    branches: List[dict] = field(default_factory=list)  # {"messages": [...], "context_start": int}: app.chat_branches
    disk: Optional[Tuple[int, int, int]] = field(default=None, repr=False, compare=False)

    def display_title(self) -> str:
        return _line(self.title or self.first_line(), 48) or "New chat"

    def first_line(self, width: int = 200) -> str:
        """The first line of the first user message, safe to show, at most `width` characters ("" if none)."""
        return _line(next((m["content"] for m in self.messages if m["role"] == "user"), ""), width)

    def to_json(self) -> dict:
        data = asdict(self)
        del data["disk"]
        return {"version": VERSION, **data}

    @classmethod
    def from_json(cls, data, where: str = "chat") -> "Chat":
        """Validate every field a chat has (type and range); anything else is a damaged file."""

        def damaged(what: str) -> ChatFileError:
            return ChatFileError(f"{where} {what}; {FIX}")

        if not isinstance(data, dict) or type(data.get("version")) is not int or data["version"] != VERSION:
            raise damaged(f"is not a version {VERSION} mlxm chat")
        msgs = data.get("messages")
        if not isinstance(msgs, list) or not all(_is_message(m) for m in msgs):
            raise damaged("has malformed messages")
        if not isinstance(data.get("id"), str) or not ID.fullmatch(data["id"]):
            raise damaged("has no valid id")
        chat = cls(id=data["id"], messages=[dict(m) for m in msgs])
        for name, kind in (("title", str), ("model", str), ("system", str), ("settings", dict),
                           ("created", (int, float)), ("updated", (int, float)), ("context_start", int)):
            if name in data:
                if not isinstance(data[name], kind) or isinstance(data[name], bool):
                    raise damaged(f"has a malformed {name!r}")
                setattr(chat, name, data[name])
        for name in ("created", "updated"):
            when = getattr(chat, name)
            if not 0 <= when <= LATEST_TIME:
                raise damaged(f"has an impossible {name!r} time ({when!r})")
        try:
            Sampling.from_dict(chat.settings)
            check_template_kwargs(chat.settings.get(TEMPLATE_KWARGS, {}))
        except ValueError as e:
            raise damaged(f"has a bad setting: {e}") from None
        chat.context_start = max(0, min(chat.context_start, len(chat.messages)))
        branches = data.get("branches", [])
        if not isinstance(branches, list) or len(branches) > MAX_BRANCHES or not all(map(_is_branch, branches)):
            raise damaged(f"has malformed branches (at most {MAX_BRANCHES}, each its messages and context start)")
        chat.branches = [{"messages": [dict(m) for m in b["messages"]], "context_start": b["context_start"]}
                         for b in branches]
        return chat


def _line(text: str, width: int) -> str:
    line = printable(text.strip().splitlines()[0]) if text.strip() else ""
    return line if len(line) <= width else line[:width - 1] + "…"


def _is_stats(stats) -> bool:
    """A reply's stats as app.reply_stats writes them: exactly its keys, token counts whole, rates and seconds
    finite, none negative, none absurd."""
    if not isinstance(stats, dict) or set(stats) != set(STATS_KEYS):
        return False
    for name, v in stats.items():
        if name.endswith("_tokens"):
            if type(v) is not int or not 0 <= v < 2 ** 53:
                return False
        elif (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
              or not 0 <= v <= (MAX_SECONDS if name == "ttft" else MAX_RATE)):
            return False
    return True


def _is_branch(b) -> bool:
    return (isinstance(b, dict) and set(b) == {"messages", "context_start"} and isinstance(b["messages"], list)
            and all(map(_is_message, b["messages"])) and type(b["context_start"]) is int
            and 0 <= b["context_start"] <= len(b["messages"]))


def _is_message(m) -> bool:
    if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
            and isinstance(m.get("stopped", False), bool)):
        return False
    if "stats" in m and not (m["role"] == "assistant" and _is_stats(m["stats"])):
        return False
    if "reasoning_content" in m or "reasoning_tokens" in m:  # a thinking model's reply (files before have none)
        tokens = m.get("reasoning_tokens", 0)
        return (m["role"] == "assistant" and isinstance(m.get("reasoning_content", ""), str)
                and type(tokens) is int and 0 <= tokens < 2 ** 53)
    return True


@dataclass(frozen=True)
class ChatInfo:
    """What the saved-chats list shows of a chat: its title, the model it was made with, when it was last saved,
    and the first line of its first message (title and first line safe to show)."""

    id: str
    title: str
    updated: float
    messages: int
    model: str
    first_line: str = ""


@dataclass(frozen=True)
class Saved:
    """Where a save went. `forked_from`: the chat's id before this save when another window had changed its file
    meanwhile; this window's version was then saved as a new chat (the new id), and both are kept."""

    path: Path
    forked_from: Optional[str] = None


class ChatStore:
    def __init__(self, root: Optional[Path] = None):
        self.folder = Path(root if root is not None else data_dir()) / "chats"

    def path(self, chat_id: str) -> Path:
        if not isinstance(chat_id, str) or not ID.fullmatch(chat_id):
            raise ChatFileError(f"{chat_id!r} is not a chat id (letters, digits, '-', '_' and '.')")
        return self.folder / f"{chat_id}.json"

    def save(self, chat: Chat) -> Saved:
        """Write `chat` atomically (temporary file, fsync, rename); the previous version survives any failure. If
        the file changed on disk since `chat` was loaded or saved, `chat` becomes a new chat (a new id) first."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._locked():
            forked_from = None
            if self._changed_on_disk(chat):
                forked_from, chat.id = chat.id, self._unused_id()
            chat.updated = time.time()
            target = self.path(chat.id)
            tmp = self.folder / f".{chat.id}.{os.getpid()}.tmp"
            data = json.dumps(chat.to_json(), ensure_ascii=False, indent=1).encode("utf-8")
            try:
                with os.fdopen(_create(tmp), "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except BaseException:
                try:
                    tmp.unlink()
                except OSError:
                    pass
                raise
            chat.disk = _identity(os.lstat(target))
        _fsync_dir(self.folder)
        return Saved(target, forked_from)

    def load(self, chat_id: str) -> Chat:
        path = self.path(chat_id)
        data, identity = _read(path, chat_id, self.folder)
        chat = Chat.from_json(data, str(path))
        if chat.id != chat_id:
            raise ChatFileError(f"{path} holds chat {chat.id!r}, not {chat_id!r}; {FIX}")
        chat.disk = identity
        return chat

    def list(self) -> Tuple[List[ChatInfo], List[str]]:
        """-> (chats newest first, names of files skipped as damaged). Temporary files are never read."""
        chats, skipped = [], []
        if not self.folder.is_dir():
            return chats, skipped
        for path in self.folder.glob("*.json"):
            if path.name.startswith("."):
                continue
            try:
                chat = self.load(path.stem)
            except ChatFileError:
                skipped.append(path.name)
                continue
            chats.append(ChatInfo(chat.id, chat.display_title(), chat.updated, len(chat.messages),
                                  printable(chat.model), chat.first_line()))
        chats.sort(key=lambda c: (c.updated, c.id), reverse=True)
        return chats, sorted(skipped)

    def delete(self, chat_id: str) -> None:
        try:
            self.path(chat_id).unlink()
        except FileNotFoundError:
            pass

    def _changed_on_disk(self, chat: Chat) -> bool:
        try:
            now = _identity(os.lstat(self.path(chat.id)))
        except FileNotFoundError:  # nothing there to overwrite (a new chat, or deleted meanwhile)
            return False
        return now != chat.disk

    def _unused_id(self) -> str:
        while True:
            chat_id = new_id()
            if not self.path(chat_id).exists():
                return chat_id

    @contextlib.contextmanager
    def _locked(self):
        """Saves from several windows (processes) take turns, so check-then-replace cannot interleave. Where
        there is no flock (Windows) saves go unlocked: the check still catches all but simultaneous saves."""
        try:
            import fcntl
        except ImportError:
            yield
            return
        lock = self.folder / ".lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC, 0o600)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # never lock (or wait on) a FIFO or device put there
                raise OSError(f"{lock} is not a regular file; delete it")
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise OSError(f"{self.folder}: another mlxm window has been saving for {LOCK_WAIT:.0f}s; "
                                      "try again") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the lock


def _create(path: Path) -> int:
    """A new file at `path` for writing, never through a symlink or into an existing file someone put there (a
    leftover of our own crashed save, with the same process id, is removed first)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | getattr(os, "O_BINARY", 0),
                   0o600)


def _identity(st: os.stat_result) -> Tuple[int, int, int]:
    """Which version of a file this is: a save replaces the file (new inode), and changes its size or mtime."""
    return st.st_ino, st.st_size, st.st_mtime_ns


def _read(path: Path, chat_id: str, folder: Path):
    """The parsed JSON of a chat file and the identity of the version read. Only a regular file (not a symlink)
    is opened, without blocking, and read up to MAX_BYTES: a FIFO would block, a device would never end."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ChatFileError(f"no saved chat {chat_id!r} in {folder}") from None
    except OSError as e:
        raise ChatFileError(f"cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ChatFileError(f"{path} is a symlink or special file, not a chat; {FIX}")
    try:  # identity from before the read: if the file is replaced meanwhile, a save keeps both versions
        return read_json(path, MAX_BYTES, FIX), _identity(st)
    except FolderError as e:
        raise ChatFileError(str(e)) from None


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); harmless where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
