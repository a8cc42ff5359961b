"""mlx-lm's prompt-cache files (mlx_lm.cache_prompt, mlx_lm.models.cache.save_prompt_cache) read as ours.

Its layout: arrays "<layer>.<j>" are each cache's `state` with scalars stored as 0-d arrays; metadata "0.<key>" is
the user's, "1.<layer>" the cache class, "2.<k>.0"/"2.<k>.1" which array is a scalar, a string or None. Read here:
KVCache (a buffer padded to 256-token steps, then the offset), QuantizedKVCache (`--kv-bits`: keys' and values'
codes, scales and biases padded alike, then offset, group size, bits) and RotatingKVCache without sinks (Gemma's
sliding layers: buffer, offset, keep, max_size, ring index). Each becomes (our class, arrays to read, meta_state,
convert), where convert turns the arrays as stored into our `state`; prompt_cache checks shapes and builds the cache.
"""

import mlx.core as mx

from .errors import ModelError

STEP = 256  # mlx-lm grows its buffers in steps of this many tokens: a buffer may hold that many unused rows
MAX_SCALAR = 1 << 31


class MlxLmCacheError(ModelError):
    """An mlx-lm prompt-cache file this version cannot use; the message says why."""


def is_mlx_lm(meta: dict) -> bool:
    return "format" not in meta and "1.0" in meta


def _scalar(f, name: str, kinds: dict, where: str) -> int:
    info = f.tensors.get(name)
    if info is None or kinds.get(name) != "scalar" or info.shape != () or info.dtype not in ("I32", "I64", "U32"):
        raise MlxLmCacheError(f"{where}: mlx-lm array {name!r} should be an integer scalar; the file is damaged")
    value = int(f.array(name).item())
    if not 0 <= value < MAX_SCALAR:
        raise MlxLmCacheError(f"{where}: mlx-lm scalar {name!r} is {value}, out of range; the file is damaged")
    return value


def _temporal(keep: int, idx: int, offset: int):
    """mlx-lm's RotatingKVCache._temporal_order (keep = 0): buffer order -> oldest-first."""

    def order(v):
        if idx == v.shape[2]:
            return v
        if idx < offset:
            return mx.concatenate([v[..., idx:, :], v[..., :idx, :]], axis=2)
        return v[..., :idx, :]

    return order


def from_mlx_lm(f, where: str, n_layers: int):
    """-> ([(kind, [(array name, f)], meta_state, convert)], info) for an mlx-lm file of n_layers caches."""
    meta = f.metadata
    classes = [meta.get(f"1.{i}") for i in range(n_layers)]
    if None in classes or f"1.{n_layers}" in meta:
        found = sum(1 for k in meta if k.startswith("1."))
        raise MlxLmCacheError(f"{where}: this mlx-lm prompt cache has {found} layers, the model has {n_layers}; "
                              "it was made for another model")
    kinds, k = {}, 1
    while f"2.{k}.0" in meta and k <= len(f.tensors):
        kinds[meta[f"2.{k}.0"]] = meta.get(f"2.{k}.1")
        k += 1
    layers, quantization = [], None
    for i, kind in enumerate(classes):
        offset = _scalar(f, f"{i}.2", kinds, where)
        arrays = [] if kinds.get(f"{i}.0") == "none" else [(f"{i}.0", f), (f"{i}.1", f)]
        if kind == "KVCache":
            layers.append(("KVCache", arrays, {"offset": str(offset)},
                           lambda a, n=offset: [x[..., :n, :] for x in a]))
        elif kind == "QuantizedKVCache":  # our QuantizedKVCache keeps the same parts: keys' then values'
            group_size, bits = (_scalar(f, f"{i}.{j}", kinds, where) for j in (3, 4))
            quantization = {"bits": str(bits), "group_size": str(group_size)}
            arrays = [] if kinds.get(f"{i}.0") == "none" else [(f"{i}.{a}.{b}", f) for a in (0, 1) for b in (0, 1, 2)]
            layers.append(("QuantizedKVCache", arrays, {"offset": str(offset), **quantization},
                           lambda a, n=offset: [x[..., :n, :] for x in a]))
        elif kind == "RotatingKVCache":
            keep, size, idx = (_scalar(f, f"{i}.{j}", kinds, where) for j in (3, 4, 5))
            if keep != 0 or size < 1:
                raise MlxLmCacheError(f"{where}: layer {i} is an mlx-lm RotatingKVCache with keep={keep} (its "
                                      "--max-kv-size cache); only sliding-window layers (keep=0) are read")
            order, n = _temporal(keep, idx, offset), min(offset, size)  # our ring keeps the last `size` tokens
            layers.append(("RotatingKVCache", arrays, {"offset": str(offset), "window": str(size), "slack": "0"},
                           lambda a, o=order, n=n: [o(x)[..., -n:, :] for x in a]))
        else:
            raise MlxLmCacheError(f"{where}: layer {i} is an mlx-lm {str(kind)[:40]}; mlx-lm files are read for "
                                  "KVCache, QuantizedKVCache and RotatingKVCache layers only")
    user = {key[2:]: v for key, v in meta.items() if key.startswith("0.")}
    return layers, {"tokens": None, "model_type": None, "quantization": quantization, "source": "mlx-lm",
                    "metadata": user}
