"""Who may write OUT: one convert at a time, and it removes only what a convert created.

Everything a run keeps beside OUT lives in OUT's parent under names no model folder has (a leading dot, OUT's
name, `.mlxm-` and a kind), and none holds a config.json until its last moment, so nothing half-written is ever
taken for a model:

    .OUT.mlxm-claim          the claim: a folder holding owner.json (pid, host, token, start time)
    .OUT.mlxm-new-TOKEN      a claim being built: owner.json is written first, then the folder is renamed to the
                             claim, which fails while another claim is there (so a claim always names its owner)
    .OUT.mlxm-partial-TOKEN  the run's work folder; it becomes OUT by a rename at the end
    .OUT.mlxm-old-TOKEN      an existing OUT set aside by --force while the new one moves in
    .OUT.mlxm-trash-TOKEN    something of ours on its way out (renamed first, so a half-removed folder never
                             keeps a name that means anything)

A claim is stale when its owner's pid is gone on this host (another host's claim is never judged; the user is told
to remove it). Whoever holds the claim sweeps what dead runs left: every new/partial/trash folder (a live run has
one only while it holds the claim, or is about to fail to take it), and an OUT set aside by a run killed between
its two renames is put back, or removed if its replacement made it in. The result replaces OUT only if the claim
still carries this run's token, and OUT is then either absent (created by this run with an exclusive mkdir, so a
folder someone made meanwhile is left alone) or, with --force, a real folder that is empty or a model folder holding
only files a convert writes (WRITTEN): a note, an adapter or a folder the user keeps there stops the run instead of
being removed with the old model. That is checked again on the old OUT once it is set aside, where no one adds to it.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Optional

from mlxmodels.errors import ModelError
from mlxmodels.formats import folder as files
from mlxmodels.formats.safetensors import INDEX

LEFTOVER = re.compile(r"(new|partial|old|trash)-([0-9a-f]{12})")
TAKEN = (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR)  # rename onto a claim that is there
TOKENIZER_FILES = ["tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt",
                   "merges.txt", "*.tiktoken", "chat_template*", "generation_config.json"]  # what convert copies
# Every name a convert writes into OUT, from any source: only regular files with these names may be replaced.
# .DS_Store is macOS Finder's view settings, written into any folder it shows and written again when it is shown.
WRITTEN = ["config.json", "model*.safetensors", INDEX, *TOKENIZER_FILES, ".DS_Store"]


class ClaimError(ModelError):
    """OUT cannot be written or replaced as asked; nothing that is not this program's was touched."""


def output_path(out) -> Path:
    """OUT as an absolute path that names one folder (never '.', '..' or '/', which would make a parent OUT)."""
    given = str(out)
    path = Path(os.path.abspath(os.path.expanduser(given)))
    if Path(given).name in ("", ".", "..") or path.parent == path:
        raise ClaimError(f"OUT {given!r} does not name a new folder; give a folder name such as models/my-model")
    return path


def check_out(out: Path, force: bool):
    """An existing OUT stops the run unless --force, and --force replaces only a real folder that is a model
    folder (config.json and weights) or empty: never a file, a link, or a folder of other things."""
    if not os.path.lexists(out):
        return
    if not force:
        raise ClaimError(f"{out} already exists; pass --force to replace it")
    if out.is_symlink() or not out.is_dir():
        what = "a symbolic link" if out.is_symlink() else "not a folder"
        raise ClaimError(f"{out} is {what}; --force replaces only a model folder, so remove it yourself or "
                         "choose another OUT")
    names = {p.name for p in out.iterdir()}
    if names and not ("config.json" in names and any(n.endswith(".safetensors") for n in names)):
        raise ClaimError(f"{out} is not a model folder (no config.json and *.safetensors); --force replaces only a "
                         "model folder, so empty it yourself or choose another OUT")
    check_only_written(out, out)


def check_only_written(folder: Path, out: Path):
    """`folder` (OUT, or OUT set aside) holds only regular files named as a convert names what it writes."""
    theirs = sorted(p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in folder.iterdir()
                    if p.is_symlink() or not p.is_file() or not any(fnmatch.fnmatchcase(p.name, w) for w in WRITTEN))
    if theirs:
        more = f" (and {len(theirs) - 1} more)" if len(theirs) > 1 else ""
        raise ClaimError(f"{out} holds {theirs[0]}{more}, which convert does not write; --force replaces only what "
                         "convert wrote, so move it out of that folder or choose another OUT")


def _prefix(out: Path) -> str:
    name = out.name
    if len(name.encode()) > 200:  # room for the kind and the token within the 255-byte name limit
        name = f"{name[:40]}~{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return f".{name}.mlxm-"


def _owner(folder: Path) -> Optional[dict]:
    try:  # a claim lives in a parent others may write to: never block on, or read much of, what is there
        owner = files.read_json(folder / "owner.json", limit=1 << 16)
        if isinstance(owner, dict) and isinstance(owner.get("pid"), int) and isinstance(owner.get("token"), str):
            return owner
    except (OSError, ValueError):
        pass
    return None


def _alive(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # its pid means nothing here
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or a pid we cannot ask about: assume it runs
    return True


class Claim:
    """This run's hold on OUT. `take` it first, `sweep`, write into `work_folder()`, `install` it, `release`."""

    def __init__(self, out: Path, made: list):
        self.out, self.made = out, made
        self.token = secrets.token_hex(6)
        self.prefix = _prefix(out)
        self.path = self._name("claim")
        self.work: Optional[Path] = None

    def _name(self, kind: str) -> Path:
        return self.out.parent / (self.prefix + (kind if kind == "claim" else f"{kind}-{self.token}"))

    @classmethod
    def take(cls, out: Path) -> "Claim":
        """Create OUT's parents and claim OUT, removing a stale claim once; a live one stops the run at once."""
        self = cls(out, [p for p in [out.parent, *out.parent.parents] if not p.exists()])
        new = self._name("new")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(new)
            owner = dict(pid=os.getpid(), host=socket.gethostname(), token=self.token, started=time.time())
            (new / "owner.json").write_text(json.dumps(owner))
            for attempt in (0, 1):
                try:
                    os.rename(new, self.path)
                    return self
                except OSError as e:
                    if e.errno not in TAKEN and e.errno != errno.ENOENT:
                        raise
                held = _owner(self.path)
                if attempt == 0 and held is not None and not _alive(held):
                    self._remove_if(self.path, held["token"])
                    continue
                raise ClaimError(self._busy(held))
        except BaseException as e:
            shutil.rmtree(new, ignore_errors=True)
            self._remove_made()
            if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise ClaimError(f"cannot write in {out.parent} ({e.strerror}); choose another place for OUT") from None
            raise

    def _busy(self, held: Optional[dict]) -> str:
        if held is None:
            return (f"{self.path} is in the way of converting to {self.out}, and is not a claim this program can "
                    "read; remove it if no convert is running")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held.get("started") or 0))
        return (f"{self.out} is being written by another convert (pid {held['pid']} on {held.get('host')}, since "
                f"{when}); wait for it or stop it (if none is running, remove {self.path})")

    def _remove_if(self, path: Path, token: Optional[str]):
        """Remove a claim (or a folder of ours) only if it still is the one we judged: it is renamed out of the way
        first and checked there, so a claim another run took meanwhile is put back, never removed."""
        trash = self.out.parent / f"{self.prefix}trash-{secrets.token_hex(6)}"  # fresh: an earlier one may remain
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return  # someone else removed it first
        if token is not None and (_owner(trash) or {}).get("token") != token:
            try:
                os.rename(trash, path)
            except OSError:
                pass  # a third run claimed meanwhile: the moved claim's owner will find it lost and stop
            return
        shutil.rmtree(trash, ignore_errors=True)

    def sweep(self):
        """Remove what dead runs on this OUT left, and put back an OUT a killed --force run had set aside."""
        for p in sorted(self.out.parent.iterdir()):
            m = p.name.startswith(self.prefix) and LEFTOVER.fullmatch(p.name[len(self.prefix):])
            if not m:
                continue
            if m.group(1) == "old" and not os.path.lexists(self.out):
                self._into_out(p)  # killed between its two renames: the previous model comes back
            else:
                self._remove_if(p, None)

    def work_folder(self) -> Path:
        self.work = self._name("partial")
        os.mkdir(self.work)
        return self.work

    def check(self):
        held = _owner(self.path)
        if held is None or held["token"] != self.token:
            raise ClaimError(f"{self.path} no longer holds this run's claim on {self.out} (removed, or taken by "
                             f"another convert); {self.out} was left as it is")

    def install(self, force: bool):
        """The finished work folder becomes OUT, if the claim is still ours and OUT may be replaced."""
        self.check()
        try:
            self._into_out(self.work)
        except FileExistsError:
            if not force:
                raise ClaimError(f"{self.out} was created by someone else while converting; it is left as it is and "
                                 "this conversion discarded: pass --force or choose another OUT") from None
            check_out(self.out, force)
            self._replace_out()
        self.work = None

    def _into_out(self, folder: Path):
        """Rename `folder` to an absent OUT. OUT is made first with an exclusive mkdir (FileExistsError: someone has
        one, left to the caller), and the rename over our own empty folder fails if someone wrote into it meanwhile:
        either way what they made stays."""
        made = False
        try:
            os.mkdir(self.out)
            made = True
            os.rename(folder, self.out)
        except BaseException as e:
            if isinstance(e, FileExistsError) and not made:
                raise
            try:
                os.rmdir(self.out)  # ours, and removed only while empty
            except OSError:
                pass
            if isinstance(e, OSError) and e.errno in TAKEN:
                raise ClaimError(f"{self.out} was filled by someone else while converting; it is left as it is "
                                 "and this conversion discarded") from None
            raise

    def _replace_out(self):
        """--force: the old OUT is set aside, the new one moved in, then the old one removed. An error or a signal
        between the two renames puts the old one back (after a kill, the next run's sweep does)."""
        old = self._name("old")
        try:
            os.rename(self.out, old)
            check_only_written(old, self.out)  # what was added since check_out; put back below
            os.rename(self.work, self.out)
        except BaseException:
            if os.path.lexists(old) and not os.path.lexists(self.out):
                os.rename(old, self.out)
            raise
        self._remove_if(old, None)

    def release(self):
        """Remove this run's work folder (unless it became OUT), its claim (if still its own), and the parents it
        created (if still empty)."""
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None
        if (_owner(self.path) or {}).get("token") == self.token:
            self._remove_if(self.path, self.token)
        self._remove_made()

    def _remove_made(self):
        for p in self.made:  # innermost first; rmdir leaves any folder that holds something
            try:
                p.rmdir()
            except OSError:
                break
