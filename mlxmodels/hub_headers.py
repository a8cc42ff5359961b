"""The safetensors headers of a Hub repo's shards, read with HTTP range requests: what `mlxm info` needs to describe
a model (names, dtypes, shapes) without downloading gigabytes of weights.

Each shard costs one request for its first 100 KB (the 8-byte length and, for nearly every checkpoint, the whole
header) and a second only for a longer header. A server that ignores the Range header (200 instead of 206) is
refused before its body is read, so a shard is never fetched whole. The bytes go through the same validation as a
local file (formats/safetensors.parse_prefix/parse_header, with the size from Content-Range), and the shards are
checked against the index as Checkpoint checks a folder.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import ModelError
from .formats.safetensors import INDEX, Checkpoint, SafetensorsError, parse_header, parse_prefix, read_index

FIRST = 100_000  # bytes asked for first: the whole header of nearly every checkpoint
TIMEOUT = 30  # seconds without data before a request is given up


@dataclass
class RemoteShard:
    """A shard known by its header only (SafetensorsFile's `path`, `tensors` and `metadata`, without the data)."""

    path: Path
    tensors: dict
    metadata: dict

    def close(self):
        pass


class HeaderCheckpoint:
    """Checkpoint's `where`/`info`/`close` over remote shard headers: every tensor in exactly one shard, as the index
    says."""

    def __init__(self, shards: list, listed: Optional[dict]):
        self.files = shards
        self.where = {}
        for f in shards:
            for name in f.tensors:
                if name in self.where:
                    raise SafetensorsError(f"tensor {name!r} is in two shards, {self.where[name].path.name} and "
                                           f"{f.path.name}; the repo is inconsistent")
                self.where[name] = f
        if listed is not None and {n: f.path.name for n, f in self.where.items()} != listed:
            raise SafetensorsError(f"{INDEX} and the shards' headers disagree on which tensors each holds")

    def info(self, name: str):
        return self.where[name].tensors[name]

    def close(self):
        pass


def checkpoint(repo: str, folder: Path):
    """The checkpoint of a Hub repo whose metadata is in `folder` (a snapshot of the HF cache): the local shards
    when an earlier download left them all there, else their headers fetched from the Hub."""
    folder = Path(folder)
    listed = read_index(folder) if (folder / INDEX).is_file() else None
    names = sorted(set(listed.values())) if listed is not None else None
    local = names if names is not None else [p.name for p in folder.glob("*.safetensors")]
    if local and all((folder / n).is_file() for n in local):
        return Checkpoint(folder)
    revision = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else None
    if names is None:
        names = _listed_shards(repo, revision)
    if not names:
        raise SafetensorsError(f"{repo} has no *.safetensors weights on the Hub; convert .bin checkpoints to "
                               "safetensors first")
    return HeaderCheckpoint([_remote_shard(repo, n, revision) for n in names], listed)


def _listed_shards(repo: str, revision: Optional[str]) -> list:
    """The safetensors files at the repo's top level, chosen as Checkpoint chooses them in a folder."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        files = [s.rfilename for s in HfApi().model_info(repo, revision=revision).siblings or []]
    except (HfHubHTTPError, OfflineModeIsEnabled, _transport_error()) as e:
        raise ModelError(f"cannot list {repo}'s files on the Hub to read its shards' headers: "
                         f"{str(e).splitlines()[0]}") from None
    top = sorted(f for f in files if "/" not in f and f.endswith(".safetensors"))
    return [f for f in top if f.startswith("model")] or top


def _remote_shard(repo: str, filename: str, revision: Optional[str]) -> RemoteShard:
    from huggingface_hub import hf_hub_url

    url = hf_hub_url(repo, filename, revision=revision)
    where = f"{repo}/{filename}"
    blob, size = _range(url, 0, FIRST, where)
    n = parse_prefix(blob, size, where)
    raw = blob[8:8 + n] if len(blob) >= 8 + n else _range(url, 8, 8 + n, where)[0]
    tensors, metadata = parse_header(raw, size - 8 - n, where)
    return RemoteShard(Path(filename), tensors, metadata)


def _range(url: str, begin: int, end: int, where: str):
    """Bytes [begin, end) of a remote file (fewer when it is shorter) and the file's size. Streamed and checked
    before the body is read: anything but 206 Partial Content is refused, never downloaded."""
    from huggingface_hub.utils import build_hf_headers

    headers = {**build_hf_headers(), "Range": f"bytes={begin}-{end - 1}"}
    try:
        with _session().stream("GET", url, headers=headers, timeout=TIMEOUT, follow_redirects=True) as r:
            if r.status_code != 206:
                why = "not 206, so its header cannot be read without downloading the whole shard"
                raise ModelError(f"cannot read {where}'s header from the Hub: HTTP {r.status_code} "
                                 f"{r.reason_phrase}" + (f" ({why})" if r.status_code < 400 else ""))
            total = re.fullmatch(r"bytes \d+-\d+/(\d+)", r.headers.get("content-range", ""))
            if total is None:
                raise ModelError(f"{where}: the Hub's range answer has no file size (Content-Range)")
            out = bytearray()
            for chunk in r.iter_bytes():
                out += chunk
                if len(out) > end - begin:  # more than asked: the server is not honouring the range
                    raise ModelError(f"{where}: the Hub sent more than the {end - begin} bytes asked for")
            return bytes(out), int(total.group(1))
    except _transport_error() as e:  # offline, refused, timed out
        raise ModelError(f"cannot read {where}'s header from the Hub ({type(e).__name__}: {e}); "
                         "check the network, or download the model once") from None


def _session():
    from huggingface_hub.utils import get_session

    return get_session()


def _transport_error() -> type:
    """The HTTP client's connection/timeout error: httpx's, or httpx2's in newer huggingface_hub releases."""
    return sys.modules[type(_session()).__module__.split(".")[0]].TransportError
