"""LoRA/DoRA adapters trained by mlx_lm.lora: a folder holding adapter_config.json and adapters.safetensors, applied
on the fly over a loaded model (`load(path, adapter_path=...)`) or fused into a converted one (quantize/fuse.py).

Tensors are named by the module they adapt, as mlx-lm names it (`model.layers.7.self_attn.q_proj.lora_a`); our
modules carry the same names. Both files come from a stranger: the config's fields, every tensor's name, leaf, rank,
shape and dtype are checked against the model from the header before any tensor is read, then the values are checked
finite; anything wrong is one AdapterError naming the file and what to do, and the model is left as it was.
"""

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from .errors import ModelError
from .formats.folder import member, read_json
from .formats.safetensors import SafetensorsFile
from .parts.experts import QuantizedSwitchLinear, SwitchLinear
from .parts.lora import DoRALinear, LoRALinear, LoRASwitchLinear
from .parts.moe import Router

CONFIG, WEIGHTS = "adapter_config.json", "adapters.safetensors"
MAX_CONFIG = 1 << 20  # mlx_lm.lora writes a few kilobytes: its training arguments
MAX_RANK = 1 << 16
FLOATS = ("F32", "F16", "BF16")
FIX = "re-train it with mlx_lm.lora or pass the right --adapter-path"
ELSEWHERE = ("another model's adapter, or one over layers mlxmodels names or computes differently from mlx-lm (GPT-2's "
             "joined c_attn, DeepSeek-V2's kv_b_proj); fuse it with mlx_lm.fuse and load the folder that writes")
WRAPPER = "language_model."  # where mlx-lm's multimodal models (Gemma 3, Llama 4) keep the text model we load
LINEARS = (nn.Linear, nn.QuantizedLinear, Router)  # x @ W.T (+ b)
SWITCHES = (SwitchLinear, QuantizedSwitchLinear)  # (E, out, in), picked per token


class AdapterError(ModelError):
    """An adapter folder that is not one, or does not fit the model it is applied to."""


@dataclass
class Adapter:
    folder: Path
    kind: str  # "lora" | "dora"
    rank: int
    scale: float
    num_layers: int  # the last num_layers layers were adapted
    modules: dict = field(default_factory=dict)  # module path -> {"lora_a", "lora_b"[, "m"]: array}


def adapter_folder(folder) -> Path:
    """`folder` as a path, refused at once unless it holds the two files mlx_lm.lora writes (what is in them is
    read_adapter's to check)."""
    folder = Path(folder).expanduser()
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).exists():
            what = "no such folder" if not folder.exists() else f"it has no {name}"
            raise AdapterError(f"{folder} is not an adapter folder ({what}); pass the folder mlx_lm.lora wrote with "
                               "--adapter-path (adapter_config.json and adapters.safetensors)")
    return folder


def read_adapter(folder, model: nn.Module) -> Adapter:
    """The adapter in `folder`, checked against `model` (a Decoder; a lazy one will do: only shapes are asked)."""
    folder = adapter_folder(folder)
    layers = model.model.layers[: model.model._n_main]
    adapter = _read_config(folder, len(layers))
    first = len(layers) - adapter.num_layers if adapter.num_layers > 0 else 0  # mlx-lm: layers[-max(n, 0):]
    modules = {path: m for path, m in model.named_modules() if isinstance(m, LINEARS + SWITCHES)}
    st = SafetensorsFile(member(folder, WEIGHTS))
    path_of = st.path  # for the errors
    try:
        for name, info in st.tensors.items():
            path, leaf = _check_tensor(name, info, adapter, modules, first, len(layers), path_of)
            if leaf in adapter.modules.get(path, {}):
                raise AdapterError(f"{path_of}: {path}.{leaf} is given twice (with and without {WRAPPER!r}); {FIX}")
            adapter.modules.setdefault(path, {})[leaf] = name
        if not adapter.modules:
            raise AdapterError(f"{path_of} holds no adapter tensor; {FIX}")
        want = {"lora_a", "lora_b", "m"} if adapter.kind == "dora" else {"lora_a", "lora_b"}
        for path, leaves in adapter.modules.items():
            if set(leaves) != want:
                raise AdapterError(f"{path_of}: {path} has {', '.join(sorted(leaves))} but a {adapter.kind} adapter "
                                   f"needs {', '.join(sorted(want))}; {FIX}")
        adapter.modules = {p: {k: st.array(n) for k, n in leaves.items()} for p, leaves in adapter.modules.items()}
    finally:
        st.close()
    _check_finite(adapter, path_of)
    return adapter


def apply_adapter(model: nn.Module, adapter: Adapter) -> nn.Module:
    """Wrap each adapted module of `model` in place; the base weights stay as they are (quantized ones too).
    `model.adapter_identity` becomes a hash of the adapter, for what depends on the model's outputs (prompt caches)."""
    wrapped, modules = [], dict(model.named_modules())
    for path, t in adapter.modules.items():
        base = modules[path]
        if isinstance(base, SWITCHES):
            wrapped.append((path, LoRASwitchLinear(base, t["lora_a"], t["lora_b"], adapter.scale)))
        elif adapter.kind == "dora":
            wrapped.append((path, DoRALinear(base, t["lora_a"], t["lora_b"], adapter.scale, t["m"])))
        else:
            wrapped.append((path, LoRALinear(base, t["lora_a"], t["lora_b"], adapter.scale)))
    _replace(model, wrapped)
    model.adapter_identity = identity(adapter)
    return model


def fuse_adapter(model: nn.Module) -> nn.Module:
    """Undo apply_adapter's wrapping in place: each wrapped layer becomes a plain one of its base's kind holding the
    fused weight (quantized again as its base was), so the model runs, quantizes and plans as a base model does."""
    fused = []
    for path, m in model.named_modules():
        if isinstance(m, (LoRALinear, LoRASwitchLinear)):
            base, weight = m.linear, m.fused()
            if isinstance(base, SWITCHES):
                layer = SwitchLinear(weight.shape[2], weight.shape[1], weight.shape[0])
            elif isinstance(base, Router):
                layer = base  # float, and its own class (bias, correction bias): only the weight changes
            else:
                layer = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in base)
            layer.weight = weight.astype(base.scales.dtype if "scales" in base else base.weight.dtype)
            if "bias" in base and not isinstance(base, Router):
                layer.bias = base.bias
            if "scales" in base:
                layer = layer.to_quantized(group_size=base.group_size, bits=base.bits, mode=getattr(base, "mode",
                                                                                                     "affine"))
            fused.append((path, layer))
    _replace(model, fused)
    return model  # adapter_identity stays: the outputs are still the adapted model's


def _replace(model: nn.Module, modules: list):
    """Swap (path, module) pairs in. Compiled steps (parts/compiled.py) take their module as input, so a trace made
    before the swap is not reused over the new modules."""
    model.update_modules(tree_unflatten(modules))
    mx.eval(model.parameters())


def identity(adapter: Adapter) -> str:
    """A hash of what the adapter does: its kind, scale and every tensor's name and values."""
    h = hashlib.sha256(f"{adapter.kind} {adapter.scale!r}".encode())
    for path in sorted(adapter.modules):
        for leaf, a in sorted(adapter.modules[path].items()):
            h.update(f"{path}.{leaf}".encode())
            h.update(memoryview(a.astype(mx.float32)))
    return h.hexdigest()[:32]


def _read_config(folder: Path, n_layers: int) -> Adapter:
    path = member(folder, CONFIG)
    cfg = read_json(path, MAX_CONFIG, fix=FIX)
    if not isinstance(cfg, dict):
        raise AdapterError(f"{path} is not a JSON object; {FIX}")
    kind = cfg.get("fine_tune_type", "lora")
    if kind == "full":
        raise AdapterError(f"{path}: a full fine-tune holds whole weights, not an adapter; fuse it with mlx_lm.fuse "
                           "and load the folder that writes")
    if kind not in ("lora", "dora"):
        raise AdapterError(f"{path}: fine_tune_type {kind!r} is not lora or dora; {FIX}")
    num_layers = cfg.get("num_layers")
    if not _is_int(num_layers) or num_layers > n_layers:
        raise AdapterError(f"{path}: num_layers {num_layers!r} is not a whole number up to the model's {n_layers} "
                           "layers; the adapter was trained for another model")
    params = cfg.get("lora_parameters")
    if not isinstance(params, dict):
        raise AdapterError(f"{path} has no lora_parameters object (rank, scale); {FIX}")
    rank, scale = params.get("rank"), params.get("scale")
    if not _is_int(rank) or not 1 <= rank <= MAX_RANK:
        raise AdapterError(f"{path}: lora_parameters.rank {rank!r} is not a whole number from 1 to {MAX_RANK}; {FIX}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        hint = " (mlx-lm's adapters say scale, not alpha)" if "alpha" in params else ""
        raise AdapterError(f"{path}: lora_parameters.scale {scale!r} is not a finite number{hint}; {FIX}")
    return Adapter(folder, kind, rank, float(scale), num_layers)


def _check_tensor(name: str, info, adapter: Adapter, modules: dict, first: int, n_layers: int, where) -> tuple:
    """-> (module path, leaf) of one header entry, its shape and dtype checked against the module it adapts."""
    path, _, leaf = name.removeprefix(WRAPPER).rpartition(".")
    if leaf not in ("lora_a", "lora_b", "m"):
        raise AdapterError(f"{where}: {name} is not an adapter tensor (lora_a, lora_b or m); {FIX}")
    parts = path.split(".")
    index = int(parts[2]) if len(parts) > 3 and parts[:2] == ["model", "layers"] and parts[2].isdigit() else -1
    if index < 0:
        raise AdapterError(f"{where}: {name} is not in a layer of this model (model.layers.N): {ELSEWHERE}")
    if not first <= index < n_layers:
        raise AdapterError(f"{where}: {name} is outside the last {n_layers - first} layer(s) that adapter_config.json "
                           f"says were adapted; {FIX}")
    module = modules.get(path)
    if module is None:
        raise AdapterError(f"{where}: {name} adapts {path}, where this model has no linear layer: {ELSEWHERE}")
    if info.dtype not in FLOATS:
        raise AdapterError(f"{where}: {name} is stored as {info.dtype}, not a float type; {FIX}")
    r = adapter.rank
    if isinstance(module, SWITCHES):
        if adapter.kind == "dora":
            raise AdapterError(f"{where}: {name}: DoRA over stacked experts is not something mlx-lm trains; {FIX}")
        n, out, d_in = module.weight.shape[0], module.weight.shape[1], _in_dims(module)
        want = {"lora_a": (n, r, d_in), "lora_b": (n, out, r)}.get(leaf)
    else:
        out, d_in = module.weight.shape[0], _in_dims(module)
        want = {"lora_a": (d_in, r), "lora_b": (r, out), "m": (out,)}[leaf]
    if want is None or tuple(info.shape) != want:
        raise AdapterError(f"{where}: {name} has shape {tuple(info.shape)} but {path} with rank {r} needs "
                           f"{want}; the adapter was trained for another model or is damaged")
    return path, leaf


def _in_dims(module) -> int:
    d = module.weight.shape[-1]
    return d * 32 // module.bits if "scales" in module else d  # quantized: `bits`-bit values packed in uint32


def _check_finite(adapter: Adapter, where):
    arrays = [(f"{p}.{k}", a) for p, t in adapter.modules.items() for k, a in t.items()]
    ok = mx.stack([mx.isfinite(a).all() for _, a in arrays]).tolist()
    bad = [n for (n, _), good in zip(arrays, ok) if not good]
    if bad:
        raise AdapterError(f"{where}: {bad[0]} holds NaN or infinite values ({len(bad)} tensor(s) do); the training "
                           f"diverged or the file is damaged; {FIX}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
