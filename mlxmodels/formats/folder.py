"""What a model folder may name, and how its files are opened.

A model folder comes from a stranger. Every file we read from it goes through `member` (the name stays inside the
folder, also after resolving symlinks, and is a regular file: FIFOs, devices and directories are refused before
anything opens them) and `open_regular` (opened without blocking, checked again on the open descriptor, so a file
swapped for a FIFO in between cannot hang us). JSON files are read with a size bound and refuse what Python's json
module would otherwise accept silently: NaN/Infinity, numbers that overflow to inf, and absurd nesting.

Hugging Face cache snapshots are folders of symlinks into the repository's `blobs/`; targets there count as inside.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Optional, Union

from mlxmodels.errors import ModelError

MAX_JSON = 64 << 20  # config and tokenizer_config files are kilobytes; a few ship large added-token tables
MAX_DEPTH = 64  # real configs nest 4 levels deep, tokenizer files about 8


class FolderError(ModelError):
    """A model folder names a file it must not, or holds a file we cannot read safely."""


def _roots(folder: Path) -> list[Path]:
    root = folder.resolve()
    roots = [root]
    if root.parent.name == "snapshots":  # huggingface_hub's cache: snapshots/<rev>/name -> ../../blobs/<hash>
        roots.append(root.parent.parent / "blobs")
    return roots


def member(folder: Union[str, Path], name: str, what: str = "") -> Path:
    """`folder/name` checked: a relative name without `..`, resolving inside the folder, a regular file.
    `what` says who named the file (e.g. "model.safetensors.index.json"), for the error."""
    folder = Path(folder)
    by = f" ({what} names it)" if what else ""
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or "\x00" in name:
        raise FolderError(f"{folder}: {name!r}{by} is not a file name inside the model folder; "
                          "the folder is damaged or crafted, re-download it")
    path = folder / name
    target = path.resolve()
    if not any(target == r or r in target.parents for r in _roots(folder)):
        raise FolderError(f"{path}{by} points outside the model folder (to {target}); "
                          "copy the real file into the folder instead of linking it")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FolderError(f"{path}{by} does not exist; re-download the model") from None
    except OSError as e:
        raise FolderError(f"cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise FolderError(f"{path}{by} is a {kind_of(mode)}, not a regular file; replace it with the real file")
    return path


def open_regular(path: Union[str, Path], fix: Optional[str] = None):
    """Open a file for binary reading without ever blocking on a FIFO or device; refuse anything but a regular file.
    `fix`: what the error tells the user to do (None: what suits a model folder's file)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise FolderError(f"cannot read {path}: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise FolderError(f"{path} is a {kind_of(mode)}, not a regular file; {fix or 'replace it with the real file'}")
    return os.fdopen(fd, "rb")


def read_bytes(path: Union[str, Path], limit: int, fix: Optional[str] = None) -> bytes:
    with open_regular(path, fix) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FolderError(f"{path} is larger than {limit >> 20} MB, far beyond any real file of its kind; "
                          f"{fix or 're-download it'}")
    return data


def exists(folder: Path, name: str) -> bool:
    return os.path.lexists(Path(folder) / name)


def read_json(path: Union[str, Path], limit: int = MAX_JSON, fix: Optional[str] = None):
    """A JSON file as Python values; anything damaged, oversized, non-finite or too deep is one FolderError
    that ends with `fix` (what to do about it; None: re-download it)."""
    raw = read_bytes(path, limit, fix)
    fix = fix or "re-download it"
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite)
    except UnicodeDecodeError as e:
        raise FolderError(f"{path} is not UTF-8 text (byte {e.start}); {fix}") from None
    except RecursionError:
        raise FolderError(f"{path} nests deeper than {MAX_DEPTH} levels; {fix}") from None
    except ValueError as e:
        raise FolderError(f"{path} is not valid JSON ({e}); {fix}") from None
    if _depth(value) > MAX_DEPTH:
        raise FolderError(f"{path} nests deeper than {MAX_DEPTH} levels; {fix}")
    return value


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _finite(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows a 64-bit float")
    return value


def _depth(value) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                return d
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"
