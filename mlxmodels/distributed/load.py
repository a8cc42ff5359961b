"""Load this rank's share of a folder: the whole model is checked from the headers, then only placed parts are read.

Tensors whose name and shape the family's map_weights keeps (nearly all of them; every tensor of an mlx-lm folder)
are read by name and slice straight from the safetensors mapping. The rest (Hugging Face folders whose experts are
stacked or whose kv_b_proj is split on load) are read one layer at a time, mapped, cut, and dropped: a rank's peak
is its share plus one layer of those.
"""

import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

import mlx.core as mx

from ..config import HFConfig, read_config
from ..families import build_spec
from ..formats.safetensors import Checkpoint
from ..load import build, check_weights, finish, placeholders, quantize_like
from .agree import agree
from .auto import choose
from .layout import Layout, ParallelError
from .memory import check_share, model_bytes, rank_budgets

LAYER = re.compile(r"^(?:model\.)?(?:layers|h)\.(\d+)\.")


def layout_for(mode: str, spec, group, budgets=None) -> Layout:
    from . import MODES

    return MODES[mode](spec, group, budgets)


def load_parallel(folder: Path, mode: str, group=None, dtype=None, budgets=None):
    """-> this rank's model (Decoder's interface, full logits on every rank) under `group` (default: the global
    group mx.distributed.init() joins)."""
    group = group if group is not None else mx.distributed.init()
    folder = Path(folder)
    if folder.is_file():
        raise ParallelError(f"{folder}: --parallel reads safetensors folders; convert the GGUF file first "
                            "(mlxm convert FILE.gguf FOLDER)")
    cfg = read_config(folder)
    adapter, spec = build_spec(cfg, str(folder / "config.json"))
    ckpt = Checkpoint(folder)
    try:
        source = placeholders(ckpt)
        agree(group, _identity(cfg, source), "model")
        whole, mapped = build(folder, cfg, adapter, spec, source)  # the whole model checked from headers alone
        # what each rank may hold: pipeline stages are sized by it, so a 192 GB Mac takes more layers than a 64 GB one
        rooms = budgets if budgets is not None else rank_budgets(group)
        if mode == "auto":
            layout = choose(whole.spec, group, rooms, model_bytes(mapped), rooms)
        else:
            layout = layout_for(mode, whole.spec, group, rooms)
        check_share(layout, mapped, rooms)  # before reading: every rank stops together when one cannot hold it
        weights = read_share(ckpt, source, mapped, layout, adapter, cfg)
    finally:
        ckpt.close()
    model = layout.build()
    quantize_like(model, _local_quantization(cfg, layout, mapped), weights)
    check_weights(model, weights, folder)
    return finish(model, weights, dtype, folder)


def read_share(ckpt: Checkpoint, source: dict, mapped: dict, layout: Layout, adapter, cfg) -> dict:
    """{local name: this rank's part} for every tensor `layout` places here."""
    direct = {n for n, a in source.items() if n in mapped and mapped[n].shape == a.shape}
    out = {}
    for name in sorted(direct):
        _put(out, layout, name, source[name].shape, lambda part, n=name: ckpt.array(n, part))
    groups = defaultdict(list)  # the tensors map_weights changes, by layer: mapped together, read together
    for name in source.keys() - direct:
        m = LAYER.match(name)
        groups[int(m.group(1)) if m else -1].append(name)
    wanted = mapped.keys() - direct
    for _, names in sorted(groups.items()):
        if not any(_placed(layout, n, mapped) for n in _outputs(names, source, adapter, cfg) & wanted):
            continue  # nothing of this group lives here: never read it
        whole = _map(adapter, {n: ckpt.array(n) for n in names}, cfg)
        for name, a in whole.items():
            if name in wanted:
                _put(out, layout, name, a.shape, lambda part, a=a: _own(a[_index(part)]))
        del whole
    return out


def _outputs(names: list, source: dict, adapter, cfg) -> set:
    """The model-space names a group maps to, from placeholders (nothing read)."""
    return set(_map(adapter, {n: source[n] for n in names}, cfg))


def _map(adapter, weights: dict, cfg) -> dict:
    # families without map_weights keep their names: what is left over is what load drops (inv_freq, a tied head)
    return adapter.map_weights(weights, cfg) if hasattr(adapter, "map_weights") else weights


def _placed(layout: Layout, name: str, mapped: dict) -> bool:
    return layout.place(name, tuple(mapped[name].shape)) is not None


def _put(out: dict, layout: Layout, name: str, shape, read) -> None:
    placement = layout.place(name, tuple(shape))
    if placement is None:
        return
    local, cut = placement
    out[local] = read(None if cut is None else cut.bounds(tuple(shape), name))


def _own(view: mx.array) -> mx.array:
    """A slice copied into its own buffer and computed now: a view would keep the whole mapped tensor (every
    expert of the layer) alive after `whole` is dropped."""
    a = mx.contiguous(view)
    mx.eval(a)
    return a


def _index(part):
    if part is None:
        return ()
    axis, lo, hi = part
    return (slice(None),) * axis + (slice(lo, hi),)


def _local_quantization(cfg, layout: Layout, mapped: dict):
    """config with mlx-lm's per-module quantization overrides renamed to this rank's module names."""
    q = cfg.get("quantization") or cfg.get("quantization_config")
    if not isinstance(q, dict) or not any(isinstance(v, (dict, bool)) for v in q.values()):
        return cfg
    local = {}
    for key, value in q.items():
        if not isinstance(value, (dict, bool)):
            local[key] = value
            continue
        name = f"{key}.weight"
        placement = layout.place(name, tuple(mapped[name].shape)) if name in mapped else None
        if placement is not None:
            local[placement[0][: -len(".weight")]] = value
    return _with(cfg, "quantization" if "quantization" in cfg else "quantization_config", local)


def _with(cfg: HFConfig, key: str, value) -> HFConfig:
    return HFConfig({**dict(cfg), key: value})


def _identity(cfg: HFConfig, source: dict) -> bytes:
    """What every rank must agree on: config.json as read (through the validating reader, not read again) and every
    tensor's name, dtype and shape."""
    h = hashlib.sha256(json.dumps(dict(cfg), sort_keys=True, default=str).encode())
    h.update(json.dumps(sorted((n, str(a.dtype), list(a.shape)) for n, a in source.items())).encode())
    return h.digest()
