"""Folder or Hub id -> config.json -> adapter.spec() -> Decoder; safetensors -> adapter.map_weights() -> weights.

Also loads mlx-lm converted folders (a `quantization` entry in config.json, `weight`/`scales`/`biases` triplets).
Nothing from the folder is ever executed.
"""

from dataclasses import replace
from pathlib import Path
from typing import Optional, Union

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from . import blas
from .config import HFConfig, ModelError, read_config
from .decoder import Decoder
from .families import build_spec
from .formats.safetensors import DTYPES, Checkpoint, read_index
from .parts.quantized import take_dequantized
from .vocab import check_tokenizer

# What a model needs besides its weights; the weights follow, only the shards the index lists. Tokenizers come as
# tokenizer.json (+ tokenizer_config.json), Meta's original/tokenizer.model or Kimi K2's tiktoken.model.
HUB_META = ["*.json", "*.jinja", "tokenizer*", "*.tiktoken", "tiktoken.model", "merges.txt", "vocab.txt",
            "original/tokenizer.model"]


class LoadError(ModelError):
    """Weights that do not fit the model their config describes."""


def hub_id(path_or_hub_id: Union[str, Path]) -> Optional[str]:
    """The Hub repo id `resolve` would fetch, or None for a local folder, a file or `ollama:NAME`; a name that is
    neither is refused."""
    if isinstance(path_or_hub_id, str) and path_or_hub_id.startswith("ollama:"):  # a Path is a path
        return None
    try:
        path = Path(path_or_hub_id).expanduser()
    except RuntimeError:  # ~someone with no such user
        raise ModelError(f"{path_or_hub_id} is not a model folder (no such user's home folder)") from None
    if path.is_dir() or path.is_file():  # a file is read as GGUF, which says so if it is something else
        return None
    name = str(path_or_hub_id)
    if path.exists() or name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise ModelError(f"{name} is not a model folder or a Hugging Face Hub id like 'org/name'")
    return name


def resolve(path_or_hub_id: Union[str, Path], before_weights=None, weights: bool = True) -> Path:
    """A local folder (or GGUF file) as is; `ollama:NAME[:TAG]` as the GGUF blob in Ollama's local store;
    otherwise a Hub repo id fetched (or found in the HF cache) with huggingface_hub: metadata first, then only the
    shards its index lists. `before_weights(repo, patterns)` runs in between (convert checks the disk space there).
    `weights=False` stops after the metadata (config, tokenizer, index): the snapshot folder has no shard unless
    an earlier download left them (`mlxm info` reads the others' headers remotely, mlxmodels/hub_headers.py)."""
    name = hub_id(path_or_hub_id)
    if name is None:
        if isinstance(path_or_hub_id, str) and path_or_hub_id.startswith("ollama:"):
            from .formats import ollama

            return ollama.resolve(path_or_hub_id)
        return Path(path_or_hub_id).expanduser()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        meta = Path(snapshot_download(name, allow_patterns=HUB_META))
        if not weights:
            return meta
        try:
            weights = sorted(set(read_index(meta).values()))
        except ModelError:
            weights = ["*.safetensors"]  # no (usable) index: the reader says what is wrong after the download
        if before_weights is not None:
            before_weights(name, HUB_META + weights)
        return Path(snapshot_download(name, allow_patterns=HUB_META + weights))
    except LocalEntryNotFoundError:
        raise ModelError(f"{name} is not in the Hugging Face cache and the Hub cannot be reached "
                         "(offline?); download it once with a network, or pass a local folder") from None
    except HfHubHTTPError as e:
        raise ModelError(f"could not fetch {name} from the Hugging Face Hub: {str(e).splitlines()[0]}") from None


def placeholders(ckpt: Checkpoint) -> dict:
    """Lazy zeros shaped and typed as the headers say: never evaluated, so nothing is read or allocated."""
    return {n: mx.zeros(ckpt.info(n).shape, DTYPES[ckpt.info(n).dtype][2]) for n in ckpt.where}


def read_weights(ckpt: Checkpoint) -> dict:
    """Every tensor of the folder's shards, through the validating reader (the same one info and convert use)."""
    return {name: ckpt.array(name) for name in ckpt.where}


def compute_dtype(requested: Optional[str], weights: dict, quantized: bool = False):
    """An explicit request wins. On a GPU: the checkpoint's own floating type. On the CPU backend: float32 when
    the weights are quantized (quantized_matmul is 7-47x slower on 16-bit activations) or a fast BLAS is loaded
    (float32 matmuls then beat the 16-bit kernels); otherwise the checkpoint's 16-bit type, which the reference
    BLAS would make 2x slower to prefill in float32 (docs/BENCHMARKS.md)."""
    if requested is not None:
        try:
            return getattr(mx, requested) if isinstance(requested, str) else requested
        except AttributeError:
            raise ModelError(f"unknown dtype {requested!r}; use float32, bfloat16 or float16") from None
    floats = [w.dtype for w in weights.values() if mx.issubdtype(w.dtype, mx.floating)]
    native = max(set(floats), key=floats.count) if floats else mx.float32
    if mx.default_device() == mx.cpu and (quantized or blas.FAST_BLAS):
        return mx.float32
    return native


def quantize_like(model: nn.Module, cfg: HFConfig, weights: dict):
    """Quantize exactly the layers the folder stores quantized (mlx-lm's `quantization` entry, per-layer overrides)."""
    q = cfg.get("quantization") or cfg.get("quantization_config")
    if not q or "bits" not in q:
        return

    def predicate(path, module):
        if not hasattr(module, "to_quantized"):
            return False
        if path in q:
            return q[path]  # a dict of overrides, or False
        return f"{path}.scales" in weights

    nn.quantize(model, q.get("group_size", 64), q["bits"], mode=q.get("mode", "affine"), class_predicate=predicate)
    # mlx-lm also quantizes modules we keep in float (MoE routers): give those their float weights back
    for path, module in model.named_modules():
        if "scales" in module or f"{path}.scales" not in weights:  # quantized here too, or stored float
            continue
        weights[f"{path}.weight"] = take_dequantized(weights, path, cfg)


def check_weights(model: nn.Module, weights: dict, folder: Path):
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    if missing:
        raise LoadError(f"{folder}: missing {len(missing)} tensor(s), e.g. {', '.join(missing[:3])}; "
                        "the checkpoint is incomplete or does not match config.json")
    if unexpected:
        raise LoadError(f"{folder}: {len(unexpected)} unexpected tensor(s), e.g. {', '.join(unexpected[:3])}; "
                        "the checkpoint does not match config.json's model_type/layer count")
    for name, p in expected.items():
        w = weights[name]
        if p.shape != w.shape:
            raise LoadError(f"{folder}: tensor {name} has shape {tuple(w.shape)} but config.json implies "
                            f"{tuple(p.shape)}; the config and the weights disagree")
        if mx.issubdtype(p.dtype, mx.floating) != mx.issubdtype(w.dtype, mx.floating):
            raise LoadError(f"{folder}: tensor {name} is stored as {_dtype_name(w.dtype)} but the model needs "
                            f"{_dtype_name(p.dtype)} (an FP8 or other quantized checkpoint: convert it with "
                            "`mlxm convert` first)")


def check_finite(model: nn.Module, folder: Path):
    """NaN or inf in a weight turns every reply into garbage; one batched reduction finds it (no per-tensor wait)."""
    floats = [(n, p) for n, p in tree_flatten(model.parameters()) if mx.issubdtype(p.dtype, mx.floating)]
    ok = mx.stack([mx.isfinite(p).all() for _, p in floats]).tolist() if floats else []
    bad = [n for (n, _), good in zip(floats, ok) if not good]
    if bad:
        raise LoadError(f"{folder}: tensor {bad[0]} holds NaN or infinite values ({len(bad)} tensor(s) do); the "
                        "checkpoint is damaged, re-download or re-convert it")


def _dtype_name(dtype) -> str:
    return str(dtype).replace("mlx.core.", "")


def build(folder: Path, cfg: HFConfig, adapter, spec, weights: dict):
    """config + the checkpoint's tensors -> (Decoder with quantized modules where stored, its weights by name),
    names and shapes checked. Run first on `placeholders`, so a checkpoint that disagrees with its config is
    refused from the headers alone, before any data is read."""
    weights = {k: v for k, v in weights.items() if not k.endswith("rotary_emb.inv_freq")}
    if hasattr(adapter, "map_weights"):
        weights = adapter.map_weights(weights, cfg)
    if spec.mtp and not any(k.startswith(f"model.layers.{spec.num_layers}.") for k in weights):
        spec = replace(spec, mtp=())  # configs announce MTP modules that transformers and mlx-lm leave out
    model = Decoder(spec)
    if spec.tie_embeddings:
        weights.pop("lm_head.weight", None)
    quantize_like(model, cfg, weights)
    check_weights(model, weights, folder)
    return model, weights


def load_model(folder: Path, dtype=None, gguf=None) -> Decoder:
    """A folder's model, or a GGUF file's (`gguf`: the file already open as a GGUFCheckpoint, which is closed)."""
    if gguf is None and Path(folder).is_file():
        from .formats.gguf_model import GGUFCheckpoint

        gguf = GGUFCheckpoint(folder)
    ckpt = gguf
    try:
        cfg = gguf.config if gguf else read_config(folder)
        adapter, spec = build_spec(cfg, str(folder) if gguf else str(Path(folder) / "config.json"))
        ckpt = ckpt or Checkpoint(folder)
        build(folder, cfg, adapter, spec, gguf.placeholders() if gguf else placeholders(ckpt))
        model, weights = build(folder, cfg, adapter, spec, gguf.weights() if gguf else read_weights(ckpt))
    finally:
        if ckpt is not None:
            ckpt.close()
    return finish(model, weights, dtype, folder)


def finish(model, weights: dict, dtype, folder):
    """Checked weights -> the model in its compute dtype, loaded, evaluated and checked finite."""
    dtype = compute_dtype(dtype, weights, quantized=any(k.endswith(".scales") for k in weights))
    weights = {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()}
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    check_finite(model, folder)
    model.eval()
    return model


def load(path_or_hub_id, dtype=None, adapter_path=None, parallel=None):
    """-> (model, tokenizer); tokenizer is None if the folder has none. `adapter_path`: a LoRA/DoRA adapter folder
    written by mlx_lm.lora, applied on the fly over the loaded weights (mlxmodels/adapters.py). `parallel`:
    "pipeline" | "tensor" | "experts" | "auto" under mlx.launch: this rank's share of the model
    (mlxmodels/distributed/), which still returns the full logits."""
    from .tokenizer import load_tokenizer

    folder = resolve(path_or_hub_id)
    if parallel is not None:
        from .distributed.load import load_parallel

        if adapter_path is not None:
            raise ModelError("--adapter-path cannot be combined with --parallel yet; fuse the adapter first "
                             "(mlxm convert --adapter-path) and load the fused folder")
        model, tokenizer = load_parallel(folder, parallel, dtype=dtype), load_tokenizer(folder)
    elif folder.is_file():  # a GGUF file holds the config, the weights and the tokenizer: parse its header once
        from .formats.gguf_model import GGUFCheckpoint

        gguf = GGUFCheckpoint(folder)
        try:
            tokenizer = gguf.tokenizer()
        except BaseException:
            gguf.close()
            raise
        model = load_model(folder, dtype, gguf)
    else:
        model, tokenizer = load_model(folder, dtype), load_tokenizer(folder)
    if adapter_path is not None:
        from .adapters import apply_adapter, read_adapter

        apply_adapter(model, read_adapter(adapter_path, model))
    if tokenizer is not None:
        check_tokenizer(tokenizer, model, str(folder))
    return model, tokenizer
