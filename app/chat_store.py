"""Saved chats: one JSON file per chat in the user data folder, written atomically.

A save writes a temporary file beside the target, flushes it to disk, then renames it over the old file
(`os.replace` is atomic), so a crash at any moment leaves either the old version or the new one, never half of
one. Files that do not parse or do not look like a chat (a half-written file from elsewhere, a hand edit gone
wrong) are skipped when listing and refused when opening; they are never shown as a chat.

The folder: $MLXM_DATA_DIR if set (tests), else the platform's user data folder (as platformdirs places it):
~/Library/Application Support/mlxmodels on macOS, $XDG_DATA_HOME/mlxmodels (~/.local/share/mlxmodels) on Linux,
%APPDATA%\\mlxmodels on Windows. Chats live in its `chats/` subfolder.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

DATA_ENV = "MLXM_DATA_DIR"
VERSION = 1
ROLES = ("user", "assistant")


class ChatFileError(ValueError):
    """A chat file that cannot be opened; the message says which and why."""


def data_dir() -> Path:
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
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


@dataclass
class Chat:
    """A conversation as saved. `messages`: {"role": "user"|"assistant", "content": str[, "stopped": True]};
    messages before `context_start` were dropped from the model's context (the conversation outgrew it)."""

    id: str = field(default_factory=new_id)
    title: str = ""
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    model: str = ""
    system: str = ""
    settings: dict = field(default_factory=dict)
    messages: List[dict] = field(default_factory=list)
    context_start: int = 0

    def display_title(self) -> str:
        if self.title:
            return self.title
        first = next((m["content"] for m in self.messages if m["role"] == "user"), "")
        line = first.strip().splitlines()[0] if first.strip() else "New chat"
        return line if len(line) <= 48 else line[:47] + "…"

    def to_json(self) -> dict:
        return {"version": VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data, where: str = "chat") -> "Chat":
        """Validate everything a chat needs; anything else is a damaged file."""
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ChatFileError(f"{where} is not a version {VERSION} mlxm chat")
        msgs = data.get("messages")
        if not isinstance(msgs, list) or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in msgs
        ):
            raise ChatFileError(f"{where} has malformed messages")
        if not isinstance(data.get("id"), str) or not data["id"]:
            raise ChatFileError(f"{where} has no id")
        chat = cls(id=data["id"], messages=[dict(m) for m in msgs])
        for name, kind in (("title", str), ("model", str), ("system", str), ("settings", dict),
                           ("created", (int, float)), ("updated", (int, float)), ("context_start", int)):
            if name in data:
                if not isinstance(data[name], kind) or isinstance(data[name], bool):
                    raise ChatFileError(f"{where} has a malformed {name!r}")
                setattr(chat, name, data[name])
        chat.context_start = max(0, min(chat.context_start, len(chat.messages)))
        return chat


@dataclass(frozen=True)
class ChatInfo:
    id: str
    title: str
    updated: float
    messages: int
    model: str


class ChatStore:
    def __init__(self, root: Optional[Path] = None):
        self.folder = Path(root if root is not None else data_dir()) / "chats"

    def path(self, chat_id: str) -> Path:
        if not chat_id or "/" in chat_id or "\\" in chat_id or chat_id.startswith("."):
            raise ChatFileError(f"{chat_id!r} is not a chat id")
        return self.folder / f"{chat_id}.json"

    def save(self, chat: Chat) -> Path:
        """Write `chat` atomically (temporary file, fsync, rename); the previous version survives any failure."""
        chat.updated = time.time()
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(chat.id)
        tmp = self.folder / f".{chat.id}.{os.getpid()}.tmp"
        data = json.dumps(chat.to_json(), ensure_ascii=False, indent=1).encode("utf-8")
        try:
            with open(tmp, "wb") as f:
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
        _fsync_dir(self.folder)
        return target

    def load(self, chat_id: str) -> Chat:
        path = self.path(chat_id)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ChatFileError(f"no saved chat {chat_id!r} in {self.folder}") from None
        except (OSError, ValueError) as e:
            raise ChatFileError(f"{path} is damaged ({e.__class__.__name__}); it was not opened") from None
        chat = Chat.from_json(data, str(path))
        if chat.id != chat_id:
            raise ChatFileError(f"{path} holds chat {chat.id!r}, not {chat_id!r}")
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
            chats.append(ChatInfo(chat.id, chat.display_title(), chat.updated, len(chat.messages), chat.model))
        chats.sort(key=lambda c: (c.updated, c.id), reverse=True)
        return chats, sorted(skipped)

    def delete(self, chat_id: str) -> None:
        try:
            self.path(chat_id).unlink()
        except FileNotFoundError:
            pass


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
