"""Prompt-cache files: the KV cache after a long prompt, saved so a later run pays only for the tokens after it.

One safetensors file. Arrays "<layer>.<j>" are each layer cache's `state`; the metadata (all strings) says which
model made it (`model_identity`), the prompt's tokens, each layer's cache class and `meta_state`, and the
quantization. The file is untrusted: the safetensors reader validates the header before any array is read, and
every layer's class, meta values, array count, shapes and dtypes are checked against the model before a cache is
built. mlx-lm's prompt-cache files (mlx_lm.cache_prompt) are read too, for the caches both have (mlxlm_cache).
"""

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from .errors import ModelError
from .formats.safetensors import SafetensorsFile, save_file
from .mlxlm_cache import STEP, from_mlx_lm, is_mlx_lm
from .parts.cache import (
    Cache,
    ChunkedKVCache,
    KVCache,
    LatentCache,
    RotatingKVCache,
    make_bounded_cache,
)
from .parts.quantized_cache import Quantized
from .parts.sink_cache import SinkKVCache
from .spec import MLASpec

FORMAT = "mlxmodels-prompt-cache-1"
MAX_META = 256  # characters in one meta_state value: offsets and sizes, never data
MAX_ARRAYS = 8  # per layer (float: 2, quantized: 6, sink cache: 3)
CACHE_DTYPES = {"F32", "F16", "BF16", "U32"}  # float rows, or quantized rows packed in uint32


class PromptCacheError(ModelError):
    """A prompt-cache file that is damaged, hostile or made for another model; the message says which."""


def model_identity(model) -> str:
    """What a cache depends on: the architecture and the weights (a hash of the spec and of a slice of the
    embedding and the final norm, so another fine-tune of the same architecture is told apart), and the adapter
    applied on the fly, if any (its layers change every key and value past the first layer)."""
    h = hashlib.sha256(repr(model.spec).encode())
    h.update(getattr(model, "adapter_identity", "").encode())
    body = model.model
    for a in (body.embed_tokens.weight[:4], body.norm.weight):
        h.update(np.array(a if a.dtype == mx.uint32 else a.astype(mx.float32)).tobytes())
    return h.hexdigest()[:32]


def _classes() -> dict:
    """Cache classes by name, found among Cache's subclasses (so a new cache kind needs no registration, only its
    module imported here: the quantized kinds come with Quantized)."""
    found, todo = {}, [Cache]
    while todo:
        for sub in todo.pop().__subclasses__():
            found[sub.__name__] = sub
            todo.append(sub)
    return found


def save_prompt_cache(path, cache: list[Any], *, model, tokens: Sequence[int], metadata: dict | None = None):
    """Write `cache` (one per layer, not paged) after `tokens` to `path`; `metadata`: extra str -> str entries."""
    tokens = [int(t) for t in (tokens.tolist() if isinstance(tokens, mx.array) else tokens)]
    if len(cache) != model.spec.num_layers or any(getattr(c, "offset", None) != len(tokens) for c in cache):
        raise ValueError(f"save_prompt_cache: the cache must hold exactly the {len(tokens)} tokens given, one cache "
                         f"per layer ({model.spec.num_layers})")
    arrays, meta = {}, {f"user.{k}": str(v) for k, v in (metadata or {}).items()}
    kinds, quantization = [], None
    for i, c in enumerate(cache):
        kinds.append(type(c).__name__)
        layer_meta = dict(c.meta_state)
        meta[f"{i}.meta"] = json.dumps(layer_meta)
        if "bits" in layer_meta:
            quantization = {k: layer_meta[k] for k in ("bits", "group_size") if k in layer_meta}
        for j, a in enumerate(c.state):
            arrays[f"{i}.{j}"] = a
    meta.update({"format": FORMAT, "model": model_identity(model), "model_type": model.spec.model_type,
                 "tokens": json.dumps(tokens), "caches": json.dumps(kinds),
                 "quantization": json.dumps(quantization)})
    save_file(path, arrays, meta)


def load_prompt_cache(path, model) -> tuple[list[Any], dict]:
    """-> (cache, meta): the caches saved in `path`, checked against `model`; meta has "tokens" (the prompt's ids,
    or None for an mlx-lm file, which does not keep them), "model_type", "quantization", "source" ("mlxmodels" or
    "mlx-lm") and "metadata" (what the saver added)."""
    where = str(path)
    if not Path(path).is_file():
        raise PromptCacheError(f"{where}: no such prompt-cache file; make one with `mlxm cache-prompt`")
    f = SafetensorsFile(path)
    try:
        meta = f.metadata
        if any(not isinstance(v, str) for v in meta.values()):
            raise PromptCacheError(f"{where}: metadata values must be strings; the file is damaged, make it again")
        if is_mlx_lm(meta):
            layers, info = from_mlx_lm(f, where, model.spec.num_layers)
        else:
            layers, info = _ours(f, where, model)
        spare = STEP if info["source"] == "mlx-lm" else 0
        cache = [_build(i, layer, model, where, spare) for i, layer in enumerate(layers)]
    finally:
        f.close()
    offsets = {c.offset for c in cache}
    if len(offsets) != 1 or (info["tokens"] is not None and offsets != {len(info["tokens"])}):
        raise PromptCacheError(f"{where}: the layers hold different numbers of tokens ({sorted(offsets)[:4]}); "
                               "the file is damaged, make it again")
    return cache, info


def _json(meta: dict, key: str, where: str):
    try:
        return json.loads(meta[key])
    except (KeyError, ValueError, RecursionError):
        raise PromptCacheError(f"{where}: metadata {key!r} is missing or not JSON; the file is damaged, "
                               "make it again with `mlxm cache-prompt`") from None


def _ours(f: SafetensorsFile, where: str, model) -> tuple[list, dict]:
    meta = f.metadata
    if meta.get("format") != FORMAT:
        raise PromptCacheError(f"{where}: not a prompt-cache file (format {meta.get('format', 'missing')!r}); "
                               "make one with `mlxm cache-prompt`")
    if meta.get("model") != model_identity(model):
        raise PromptCacheError(f"{where} was made for another model ({meta.get('model_type') or 'unknown'}, "
                               f"identity {str(meta.get('model'))[:12]}); make it again with this model")
    tokens, kinds = _json(meta, "tokens", where), _json(meta, "caches", where)
    vocab = model.spec.vocab_size
    if not isinstance(tokens, list) or not all(isinstance(t, int) and 0 <= t < vocab for t in tokens):
        raise PromptCacheError(f"{where}: tokens must be a list of ids below {vocab}; the file is damaged")
    n = model.spec.num_layers
    if not isinstance(kinds, list) or len(kinds) != n:
        raise PromptCacheError(f"{where}: it has caches for {len(kinds) if isinstance(kinds, list) else '?'} "
                               f"layers, the model has {n}; the file is damaged or for another model")
    per_layer = {}
    for name in f.tensors:
        i, _, j = name.partition(".")
        if not (i.isdigit() and j.isdigit() and int(i) < n and int(j) < MAX_ARRAYS):
            raise PromptCacheError(f"{where}: unexpected array {name[:40]!r}; the file is damaged")
        per_layer.setdefault(int(i), {})[int(j)] = name
    layers = []
    for i, kind in enumerate(kinds):
        names = per_layer.get(i, {})
        if sorted(names) != list(range(len(names))):
            raise PromptCacheError(f"{where}: layer {i}'s arrays are not numbered 0..{len(names) - 1}")
        layer_meta = _json(meta, f"{i}.meta", where)
        state = [(names[j], f) for j in range(len(names))]
        layers.append((kind, state, layer_meta, None))
    quantization = _json(meta, "quantization", where)
    user = {k[len("user."):]: v for k, v in meta.items() if k.startswith("user.")}
    return layers, {"tokens": tokens, "model_type": meta.get("model_type"), "quantization": quantization,
                    "source": "mlxmodels", "metadata": user}


def _layer_width(attn) -> tuple[int, int]:
    """(heads, features) a layer's cached rows can have: the latent row for MLA, else (KV heads, head_dim)."""
    if isinstance(attn, MLASpec):
        return 1, attn.kv_lora_rank + attn.qk_rope_head_dim
    return attn.n_kv_heads, attn.head_dim


def _build(i: int, layer, model, where: str, spare: int = 0):
    """Check layer i's class, meta and arrays against the model, then read the arrays and build the cache.
    layer: (class name, [(array name, file)], meta_state, convert or None: stored arrays -> state); `spare`: unused
    rows a stored buffer may have past its tokens (mlx-lm pads to 256-token steps)."""
    kind, state, layer_meta, convert = layer
    what = f"{where}: layer {i}"
    cls = _classes().get(kind) if isinstance(kind, str) else None
    if cls is None or not hasattr(cls, "from_state"):
        raise PromptCacheError(f"{what} has cache kind {str(kind)[:40]!r}, which this version cannot read")
    if not isinstance(layer_meta, dict) or not all(isinstance(k, str) and isinstance(v, str) and len(v) <= MAX_META
                                                   for k, v in layer_meta.items()):
        raise PromptCacheError(f"{what}: its meta_state must map names to short strings; the file is damaged")
    offset = layer_meta.get("offset", "")
    if not (offset.isascii() and offset.isdigit() and len(offset) < 11):
        raise PromptCacheError(f"{what}: offset {offset[:20]!r} is not a token count; the file is damaged")
    attn = model.spec.layers[i].attn
    heads, width = _layer_width(attn)
    arrays = []
    for name, source in state:
        info = source.tensors[name]
        if info.dtype not in CACHE_DTYPES:
            raise PromptCacheError(f"{what}: array {name} is {info.dtype}, not a cache dtype; the file is damaged")
        shape = info.shape
        rows_ok = len(shape) == 4 and shape[0] == 1 and shape[1] == heads and shape[2] <= int(offset) + spare \
            and shape[3] <= width
        freqs_ok = len(shape) == 1 and shape[0] <= width  # a sink cache's RoPE periods
        if not (rows_ok or freqs_ok):
            raise PromptCacheError(f"{what}: array {name} has shape {list(shape)[:6]}, which this model's layer "
                                   f"(1 x {heads} heads x <= {offset} tokens x <= {width}) cannot hold; "
                                   "the file is damaged or for another model")
        arrays.append(source.array(name))
    try:
        cache = cls.from_state(convert(arrays) if convert else arrays, layer_meta)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise PromptCacheError(f"{what}: cannot rebuild its {kind} ({type(e).__name__}: {str(e)[:80]}); "
                               "the file is damaged") from None
    if getattr(cache, "offset", None) != int(offset) or not _fits(cache, attn):
        raise PromptCacheError(f"{what}: its {kind} ({', '.join(f'{k}={v}' for k, v in layer_meta.items())[:120]}) "
                               "does not match this model's layer; the file is damaged or for another model")
    return cache


def _kept(cache) -> int:
    return 0 if not cache.state else cache.state[0].shape[2]


def _fits(cache, attn) -> bool:
    """The caches' sizes agree with the layer and with each other (a wrong window or offset would attend over the
    wrong rows or index past them); a quantized kind is checked as its float kind (its codes count the rows)."""
    n, kept = cache.offset, _kept(cache)
    if len({a.shape[2] for a in cache.state if a.ndim == 4}) > 1:
        return False
    if isinstance(cache, Quantized) and cache.quantized and cache.state \
            and cache.state[1].shape[-1] * cache.group_size != _layer_width(attn)[1]:
        return False  # its scales (state[1]) give rows of another width
    if isinstance(cache, (KVCache, LatentCache)):
        ok = kept == n and (isinstance(cache, KVCache) or cache.value_dims == attn.kv_lora_rank)
        return ok and not (isinstance(cache, KVCache) and isinstance(attn, MLASpec))
    if isinstance(cache, RotatingKVCache):
        return cache.window == attn.window and kept <= min(n, cache.capacity) and cache.capacity < 2 * cache.window
    if isinstance(cache, ChunkedKVCache):
        return (cache.chunk == attn.chunk and cache.start % cache.chunk == 0 and cache.start <= n
                and kept == n - cache.start and cache.slack < cache.chunk)
    if isinstance(cache, SinkKVCache):
        if kept > min(n, cache.keep + cache.window - 1):
            return False
        try:
            expected = make_bounded_cache(attn, cache.keep + cache.window)
        except ValueError:
            return False
        shape = ("keep", "dims", "traditional", "rot_start", "latent")
        if not isinstance(expected, SinkKVCache) or any(getattr(expected, a) != getattr(cache, a) for a in shape):
            return False
        if expected.freqs is None or cache.freqs is None:
            return expected.freqs is None and cache.freqs is None
        return cache.freqs.shape == expected.freqs.shape and bool(mx.array_equal(cache.freqs, expected.freqs))
    return True
