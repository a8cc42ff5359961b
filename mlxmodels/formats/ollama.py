"""`ollama:NAME[:TAG]` -> the GGUF file of a model Ollama has pulled, found in its local store, read-only.

Ollama keeps models as content-addressed blobs with one manifest per name and tag:

    $OLLAMA_MODELS (default ~/.ollama/models)
        manifests/<host>/<namespace>/<model>/<tag>     JSON: {"layers": [{"mediaType", "digest", "size"}, ...]}
        blobs/sha256-<64 hex>                          the layer whose mediaType is ...ollama.image.model is a GGUF

A name is `model`, `namespace/model` or `host/namespace/model` (host registry.ollama.ai, namespace library and tag
latest by default), as `ollama pull` takes it. The store may be shared or planted, so nothing in it is trusted:
every name part is checked before it becomes a path, the manifest is read with a size bound as strict JSON, the
digest must be `sha256:` and 64 hex digits, and the manifest and the blob must be regular files that stay inside
the store once symlinks are resolved. Nothing is written, and Ollama itself is never run.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from mlxmodels.errors import ModelError

from .folder import FolderError, kind_of, read_json

PREFIX = "ollama:"
HOST, NAMESPACE, TAG = "registry.ollama.ai", "library", "latest"
MODEL_LAYER = "application/vnd.ollama.image.model"
MAX_MANIFEST = 1 << 20  # real manifests are under 2 KB: a handful of layers
PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")  # Ollama's name parts; never "." or ".."
HOST_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}(:[0-9]{1,5})?")
DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


class OllamaError(ModelError):
    """An Ollama model that is not pulled, a store that is missing, or a store we cannot trust."""


def store() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models").expanduser()


def parse(ref: str) -> tuple[str, str, str, str]:
    """'ollama:user/name:tag' -> (host, namespace, model, tag), each part checked to be a plain name."""
    text = ref[len(PREFIX):] if ref.startswith(PREFIX) else ref
    path, _, tag = text.rpartition(":") if ":" in text.rsplit("/", 1)[-1] else (text, "", TAG)
    parts = path.split("/")
    if not 1 <= len(parts) <= 3:
        raise OllamaError(f"{ref!r} is not an Ollama model name; use ollama:NAME[:TAG] (e.g. ollama:llama3.2 or "
                          "ollama:user/name:tag)")
    host, namespace, model = [HOST, NAMESPACE][:3 - len(parts)] + parts
    for part, pattern in ((host, HOST_PART), (namespace, PART), (model, PART), (tag, PART)):
        if not pattern.fullmatch(part):
            raise OllamaError(f"{ref!r} is not an Ollama model name ({part!r} is not a plain name part); use "
                              "ollama:NAME[:TAG] (e.g. ollama:llama3.2 or ollama:user/name:tag)")
    return host, namespace, model, tag


def resolve(ref: str) -> Path:
    """The model blob (a GGUF file) of `ref` in the local store; OllamaError in one line otherwise."""
    host, namespace, model, tag = parse(ref)
    short = model if (host, namespace) == (HOST, NAMESPACE) else (
        f"{namespace}/{model}" if host == HOST else f"{host}/{namespace}/{model}")
    pull = f"`ollama pull {short}{'' if tag == TAG else ':' + tag}`"
    root = store()
    if not root.is_dir():
        raise OllamaError(f"Ollama's model store {root} does not exist (set OLLAMA_MODELS if it is elsewhere); "
                          f"install Ollama and run {pull}")
    root = root.resolve()
    manifest = root / "manifests" / host / namespace / model / tag
    if not os.path.lexists(manifest):
        raise OllamaError(f"ollama:{short}:{tag} is not in Ollama's store {root}; run {pull} first")
    layer = _model_layer(_inside(root, manifest, "manifest"), pull)
    hexdigest = DIGEST.fullmatch(layer["digest"]).group(1)
    blob = root / "blobs" / f"sha256-{hexdigest}"
    if not os.path.lexists(blob):
        raise OllamaError(f"{manifest} names blob sha256-{hexdigest}, which is not in {root / 'blobs'}: the pull "
                          f"was interrupted; run {pull} again")
    blob = _inside(root, blob, "model blob")
    size = layer.get("size")
    if isinstance(size, int) and not isinstance(size, bool) and size != blob.stat().st_size:
        raise OllamaError(f"{blob} has {blob.stat().st_size} bytes but its manifest says {size}: the pull was "
                          f"interrupted or the file was changed; run {pull} again")
    return blob


def _inside(root: Path, path: Path, what: str) -> Path:
    """`path` with symlinks resolved, checked to stay in the store and to be a regular file (not opened: a FIFO
    would block)."""
    target = path.resolve()
    if not target.is_relative_to(root):
        raise OllamaError(f"Ollama's {what} {path} points outside the store {root} (to {target}); the store is "
                          "damaged or was tampered with")
    try:
        mode = os.stat(target).st_mode
    except OSError as e:
        raise OllamaError(f"cannot read Ollama's {what} {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise OllamaError(f"Ollama's {what} {path} is a {kind_of(mode)}, not a regular file; the store is damaged")
    return target


def _model_layer(manifest: Path, pull: str) -> dict:
    """The manifest's one model layer, its digest checked."""
    fix = f"the manifest is damaged; run {pull} again"
    try:
        data = read_json(manifest, MAX_MANIFEST, fix)
    except FolderError as e:
        raise OllamaError(str(e)) from None
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
        raise OllamaError(f"{manifest} has no list of layers; {fix}")
    models = [x for x in layers if x.get("mediaType") == MODEL_LAYER]
    if len(models) != 1:
        raise OllamaError(f"{manifest} has {len(models)} model layers ({MODEL_LAYER}), not one; "
                          + ("the name is not a model (an adapter or a vision projector?)" if not models else fix))
    digest = models[0].get("digest")
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise OllamaError(f"{manifest}: the model layer's digest {str(digest)[:80]!r} is not sha256: and 64 hex "
                          f"digits; {fix}")
    return models[0]
