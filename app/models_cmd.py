"""`mlxm ls` and `mlxm rm NAME`: the models on this machine, as `ollama ls/rm` and `mlx_lm.manage` show them.

Three places hold models: the Hugging Face cache (huggingface_hub's scan_cache_dir, which honours HF_HOME and
HF_HUB_CACHE; a repo is listed when its newest snapshot has a config.json), the folders `mlxm convert` wrote, and
the GGUF files a command loaded with -m. Convert leaves no lasting mark on its output (its claim is removed once
OUT is installed), so the last two are recorded in `models.json` in the user data folder (app/chat_store.py's
data_dir): after a command succeeds, `remember_run` adds convert's OUT or the -m GGUF file with the time. The list
is written atomically (temporary file, fsync, rename) and read as untrusted input: a malformed entry is skipped,
and so is one whose folder or file no longer exists. Two commands finishing at the same instant may lose one
entry (last writer wins); that costs a line in `ls`, never a file.

`rm` deletes only what one of these places names: a cache repo through huggingface_hub's delete_revisions
strategy (every revision, so the repo folder goes), or a recorded folder or GGUF file (then its entry). It asks
y/N on a terminal; --yes skips the question, and without a terminal and without --yes it refuses.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

LIST_NAME = "models.json"
KINDS = ("converted", "gguf")
MAX_ENTRIES = 500  # the oldest fall off: the list stays small to read at every `ls`
MAX_LIST_BYTES = 1 << 20
COLUMNS = ("NAME", "FAMILY", "SIZE", "QUANTIZATION", "LAST USED")


@dataclass
class Model:
    name: str
    family: str
    size: int
    quantization: str
    used: Optional[float]  # seconds since the epoch; None when unknown
    kind: str  # "hub", "converted" or "gguf"
    delete: Callable[[], None] = field(repr=False, default=None)


# ---------------------------------------------------------------- the recorded list


def list_path() -> Path:
    from app.chat_store import data_dir

    return data_dir() / LIST_NAME


def _valid(entry) -> bool:
    return (isinstance(entry, dict) and entry.get("kind") in KINDS and isinstance(entry.get("path"), str)
            and os.path.isabs(entry["path"]) and "\x00" not in entry["path"]
            and isinstance(entry.get("used"), (int, float)) and not isinstance(entry["used"], bool)
            and math.isfinite(entry["used"]) and 0 <= entry["used"] < 32503680000.0)


def read_list() -> List[dict]:
    """The recorded entries that are well formed (whether their path exists is checked by the caller)."""
    path = list_path()
    try:
        if not path.is_file() or path.stat().st_size > MAX_LIST_BYTES:
            return []
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return []
    return [e for e in data if _valid(e)] if isinstance(data, list) else []


def write_list(entries: List[dict]) -> None:
    path = list_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{LIST_NAME}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(entries[-MAX_ENTRIES:], f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remember(path: Path, kind: str) -> None:
    key = str(Path(path).resolve())
    entries = [e for e in read_list() if e["path"] != key]
    write_list(entries + [dict(path=key, kind=kind, used=time.time())])


def remember_run(args) -> None:
    """After a command succeeded: record convert's OUT, or the GGUF file given to -m. Never fails the command."""
    try:
        if getattr(args, "command", None) == "convert":
            remember(Path(args.out), "converted")
        elif isinstance(getattr(args, "model", None), str) and args.model.lower().endswith(".gguf") \
                and os.path.isfile(args.model):
            remember(Path(args.model), "gguf")
    except (OSError, ValueError):
        pass  # an unwritable data folder costs the entry in `ls`, not the work the command did


# ---------------------------------------------------------------- what each place holds


def _family(cfg) -> str:
    from mlxmodels.families import REGISTRY

    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    if isinstance(model_type, str) and model_type in REGISTRY:
        return model_type
    return f"unknown ({model_type})" if isinstance(model_type, str) and model_type else "unknown"


def _quantization(cfg) -> str:
    """'4-bit, group 64' from mlx-lm's `quantization` (or transformers' quantization_config), else the dtype."""
    if not isinstance(cfg, dict):
        return "-"
    q = cfg.get("quantization") or cfg.get("quantization_config")
    if isinstance(q, dict):
        bits, group = q.get("bits"), q.get("group_size")
        if isinstance(bits, int):
            return f"{bits}-bit" + (f", group {group}" if isinstance(group, int) else "")
        method = q.get("quant_method") or q.get("mode")
        if isinstance(method, str):
            return method
    dtype = cfg.get("torch_dtype") or cfg.get("dtype")
    return dtype if isinstance(dtype, str) else "-"


def _read_config(path: Path):
    try:
        if path.stat().st_size > MAX_LIST_BYTES:
            return None
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None


def hub_models() -> List[Model]:
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir()
    except (CacheNotFound, OSError):
        return []
    out = []
    for repo in cache.repos:
        if repo.repo_type != "model" or not repo.revisions:
            continue
        newest = max(repo.revisions, key=lambda r: r.last_modified)
        config = newest.snapshot_path / "config.json"
        if not config.is_file():
            continue  # not a model folder this app loads (a GGUF-only repo, a tokenizer)
        cfg = _read_config(config)
        def delete(repo_id=repo.repo_id):
            now = scan_cache_dir()
            # a commit hash names a revision in every repo that shares the history (a duplicated repo): the strategy
            # is made from a view of the cache holding this repo alone, so no other repo's files go with it
            [mine] = [r for r in now.repos if r.repo_type == "model" and r.repo_id == repo_id]
            only = dataclasses.replace(now, repos=frozenset({mine}))
            only.delete_revisions(*(r.commit_hash for r in mine.revisions)).execute()

        out.append(Model(repo.repo_id, _family(cfg), repo.size_on_disk, _quantization(cfg), repo.last_accessed,
                         "hub", delete))
    return out


def _folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):  # symlinks to folders are not followed
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _too_wide(path: Path) -> bool:
    """A list edited by hand must not turn `rm` into deleting a home or top-level folder."""
    return len(path.parts) < 3 or path in (Path.home(), Path.home().parent) or os.path.ismount(path)


def recorded_models() -> List[Model]:
    out = []
    for entry in read_list():
        path = Path(entry["path"])
        if entry["kind"] == "converted":
            if path.is_symlink() or not (path / "config.json").is_file() or _too_wide(path):
                continue  # gone, or replaced by something that is not a model folder: not ours to show or delete
            cfg = _read_config(path / "config.json")
            out.append(Model(str(path), _family(cfg), _folder_bytes(path), _quantization(cfg), entry["used"],
                             "converted", lambda path=path: shutil.rmtree(path)))
        elif path.is_file() and not path.is_symlink():
            try:
                from app.model_arg import model_config

                cfg = model_config(path)
            except (ValueError, OSError):  # ModelError is a ValueError: a damaged or unsupported GGUF
                cfg = None
            out.append(Model(str(path), _family(cfg), path.stat().st_size, _quantization(cfg), entry["used"],
                             "gguf", path.unlink))
    return out


def all_models() -> List[Model]:
    return hub_models() + recorded_models()


# ---------------------------------------------------------------- ls


def ago(when: Optional[float], now: float) -> str:
    if when is None:
        return "-"
    seconds = max(0.0, now - when)
    for unit, span in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= span:
            n = int(seconds // span)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


def table(models: List[Model], now: float) -> str:
    from app.chat_store import printable
    from app.sizes import human_bytes

    rows = [COLUMNS] + [(printable(m.name), printable(m.family), human_bytes(m.size), printable(m.quantization),
                         ago(m.used, now)) for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def cmd_ls(args):
    models = sorted(all_models(), key=lambda m: -(m.used or 0))
    if not models:
        print("no models yet: none in the Hugging Face cache, none converted or loaded from a GGUF file",
              file=sys.stderr)
        return
    print(table(models, time.time()))


# ---------------------------------------------------------------- rm


def find(name: str, models: List[Model]) -> Model:
    from app.chat_store import printable

    for m in models:
        if m.name == name:
            return m
    if os.path.exists(name):  # a recorded path given another way (relative, through a link)
        real = str(Path(name).resolve())
        for m in models:
            if m.kind != "hub" and m.name == real:
                return m
    names = [m.name for m in models]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    close += [n for n in names if name.lower() in n.lower() and n not in close][:3 - len(close)]
    hint = f"; did you mean {', '.join(printable(c) for c in close)}?" if close else "; `mlxm ls` lists them"
    raise ValueError(f"no model {printable(name)!r} in the Hugging Face cache or among the converted folders and "
                     f"GGUF files mlxm knows{hint}")


def confirm(question: str) -> bool:
    try:
        answer = input(question)
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def cmd_rm(args):
    from app.chat_store import printable
    from app.sizes import human_bytes

    model = find(args.name, all_models())
    what = {"hub": "the cached repo", "converted": "the converted folder", "gguf": "the GGUF file"}[model.kind]
    label = f"{what} {printable(model.name)} ({human_bytes(model.size)})"
    if not args.yes:
        if not sys.stdin.isatty():
            raise ValueError(f"rm deletes {label} and asks first, but stdin is not a terminal; pass --yes")
        if not confirm(f"delete {label}? [y/N] "):
            print("nothing deleted", file=sys.stderr)
            return
    model.delete()
    if model.kind != "hub":
        write_list([e for e in read_list() if e["path"] != model.name])
    print(f"deleted {label}")


def add_parsers(sub):
    ls = sub.add_parser("ls", help="list the models on this machine (Hugging Face cache, converted, GGUF)",
                        description="List the models in the Hugging Face cache ($HF_HOME, $HF_HUB_CACHE), the "
                                    "folders `mlxm convert` wrote and the GGUF files loaded with -m: name, family "
                                    "(model_type), size on disk, quantization and when each was last used.")
    ls.set_defaults(func=cmd_ls)
    rm = sub.add_parser("rm", help="delete a model that `mlxm ls` lists",
                        description="Delete a model `mlxm ls` lists: a Hugging Face cache repo (every revision) "
                                    "or a folder `mlxm convert` wrote or a GGUF file mlxm loaded. Asks first.")
    rm.add_argument("name", metavar="NAME", help="the name as `mlxm ls` prints it")
    rm.add_argument("-y", "--yes", action="store_true", help="do not ask (needed when stdin is not a terminal)")
    rm.set_defaults(func=cmd_rm)
