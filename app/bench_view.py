"""The folder mlx-lm is benchmarked on: the model's own, or a temporary view of it without the weights mlx-lm
cannot read.

mlx-lm builds `num_hidden_layers` decoder layers and refuses a checkpoint that holds more: DeepSeek-V3-style MTP
modules stored as `model.layers.N.*` for N >= num_hidden_layers (mlx-lm 0.32 drops them for some families only;
the built-in default model is one it refuses). mlx-lm never runs MTP modules, so leaving them out changes nothing it
computes. The view is a temporary folder: files under 64 MiB copied (our readers take no links out of a folder),
larger ones and the shards without such tensors linked, and only the shards that hold them rewritten with the
rest of their tensors (bytes copied as stored, nothing decoded) and an index to match. It is removed on exit.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Tuple

from app import signals
from mlxmodels.formats.safetensors import INDEX, Checkpoint, SafetensorsFile, header_bytes

LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
COPY_BELOW = 64 << 20  # config, tokenizer and template files: copied; anything larger: linked
CHUNK = 64 << 20


def extra_layer_tensors(ckpt: Checkpoint, num_layers: int) -> set:
    """Names of the tensors in decoder layers past the last one the config builds (MTP modules)."""
    return {n for n in ckpt.where if (m := LAYER.search(n)) and int(m.group(1)) >= num_layers}


@contextlib.contextmanager
def peer_view(folder: Path, num_layers: int) -> Iterator[Tuple[Path, int]]:
    """-> (the folder mlx-lm should load, how many tensors its view leaves out: 0 means `folder` itself)."""
    ckpt = Checkpoint(folder)
    try:
        drop = extra_layer_tensors(ckpt, num_layers)
        shards = {f.path.name: f for f in ckpt.files}
        stripped = {ckpt.where[n].path.name for n in drop}
    finally:
        ckpt.close()
    if not drop:
        yield folder, 0
        return
    view = None
    try:
        with signals.held():  # its name is recorded before a signal can stop us
            view = Path(tempfile.mkdtemp(prefix="mlxm-bench-view-"))
        for entry in sorted(folder.iterdir()):
            if entry.name == INDEX or entry.name in stripped or not entry.is_file():
                continue
            if entry.name not in shards and entry.stat().st_size < COPY_BELOW:
                shutil.copyfile(entry, view / entry.name)
            else:
                (view / entry.name).symlink_to(entry.resolve())
        for name in sorted(stripped):
            _write_without(SafetensorsFile(folder / name), drop, view / name)
        if (folder / INDEX).is_file():
            index = json.loads((folder / INDEX).read_text())  # Checkpoint has checked it
            index["weight_map"] = {k: v for k, v in index["weight_map"].items() if k not in drop}
            index.pop("metadata", None)  # its total_size counted the tensors left out
            (view / INDEX).write_text(json.dumps(index, indent=2))
        yield view, len(drop)
    finally:
        if view is not None:
            shutil.rmtree(view, ignore_errors=True)


def _write_without(src: SafetensorsFile, drop: set, dst: Path) -> None:
    """`src` less the tensors in `drop`, each kept tensor's bytes copied as stored, in the source's order."""
    keep = sorted(((n, t) for n, t in src.tensors.items() if n not in drop), key=lambda item: item[1].begin)
    try:
        with open(src.path, "rb") as f, open(dst, "wb") as out:
            out.write(header_bytes([(n, t.dtype, t.shape) for n, t in keep], src.metadata))
            for _, t in keep:
                f.seek(src.data_start + t.begin)
                left = t.nbytes
                while left:
                    chunk = f.read(min(left, CHUNK))
                    if not chunk:
                        raise OSError(f"{src.path} ended early; re-download it")
                    out.write(chunk)
                    left -= len(chunk)
    finally:
        src.close()
