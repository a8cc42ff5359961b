"""`mlxm info`: what a model is and what it will cost, read from config.json and the safetensors headers (or a
GGUF file's header: its metadata and tensor table); no weights are loaded.

Parameters are counted on a `Decoder` built from the spec (MLX initialises lazily, so nothing is allocated).
Active parameters: routed experts count top_k / n_experts of their size; shared experts, attention, embeddings
and the head count fully. Memory to load: every float tensor in the compute dtype (the loader casts them), the
rest as stored. KV cache per token: 2 x KV heads x head dim per attention layer, kv_lora_rank + qk_rope_head_dim
per MLA layer (its latent-only cache); at full context sliding layers hold at most their window and chunked layers
at most one chunk.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import List, Optional

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ST_FLOATS = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def describe(model: Optional[str], dtype: Optional[str] = None) -> dict:
    from app import model_arg
    from mlxmodels.config import read_config
    from mlxmodels.families import build_spec
    from mlxmodels.spec import MLASpec, MoESpec

    from mlxmodels.load import hub_id

    repo = hub_id(model_arg.model_source(model))
    folder = model_arg.resolve_folder(model, weights=repo is None)  # a Hub repo: metadata only, never a shard
    gguf = _GGUFHeader(folder) if model_arg.is_gguf(folder) else None
    try:
        cfg = gguf.config if gguf else read_config(folder)
        adapter, spec = build_spec(cfg, str(folder) if gguf else str(folder / "config.json"))
        # name -> (dtype, numel, nbytes); {} when the folder has no weights
        tensors = _gguf_tensors(gguf, cfg, adapter, spec) if gguf else _tensors(folder, cfg, adapter, spec, repo)
    finally:
        if gguf is not None:
            gguf.close()
    if spec.mtp and tensors and not any(k.startswith(f"model.layers.{spec.num_layers}.") for k in tensors):
        # as the loader does: announced MTP modules whose weights are absent (a config alone reports them)
        spec = replace(spec, mtp=())
    counts = _count(spec)

    stored = [ST_FLOATS[d] for d, _, _ in tensors.values() if d in ST_FLOATS]
    if dtype is None:  # the loader's policy, fed the stored dtypes (or config.json's when there are no weights)
        from types import SimpleNamespace

        import mlx.core as mx

        from mlxmodels.load import compute_dtype

        names = stored or [_config_dtype(cfg) or "float32"]
        quantized = any(k.endswith(".scales") for k in tensors) or bool((cfg.get("quantization") or {}).get("bits"))
        chosen = compute_dtype(None, {i: SimpleNamespace(dtype=getattr(mx, n)) for i, n in enumerate(names)},
                               quantized=quantized)
        dtype = str(chosen).replace("mlx.core.", "")
    item = DTYPE_BYTES.get(dtype, 4)

    layers = spec.layers
    kinds = [_kind(layer.attn) for layer in layers]
    per_layer_kv = [_kv_bytes(layer.attn, item) for layer in layers]
    context = _context(cfg)
    full_kv = sum(b * min(context, _bound(layer.attn) or context) for b, layer in zip(per_layer_kv, layers))
    nope = [i for i, layer in enumerate(layers) if not isinstance(layer.attn, MLASpec) and layer.attn.rope is None]
    moe = [i for i, layer in enumerate(layers) if isinstance(layer.ffn, MoESpec)]

    if tensors:
        load_bytes = sum(numel * item if d in ST_FLOATS else nbytes for d, numel, nbytes in tensors.values())
        source = "checkpoint"
    else:
        q = cfg.get("quantization") or {}
        per_weight = q["bits"] / 8 + 4 / q.get("group_size", 64) if q.get("bits") else item
        load_bytes = int((counts["total"] + counts["mtp"]) * per_weight)
        source = "config estimate (no weights in the folder)"

    first = layers[0].attn
    return {
        **({"format": gguf.format} if gguf else {}),
        "model": model_arg.display_name(model),
        "folder": str(folder),
        "family": cfg.get("model_type", ""),
        "architecture": (cfg.get("architectures") or [""])[0],
        "params_total": counts["total"],
        "params_active": counts["active"],
        "params_mtp": counts["mtp"],
        "layers": len(layers),
        "hidden_size": spec.hidden_size,
        "vocab_size": spec.vocab_size,
        "attention": _attention(first),
        "pattern": pattern(kinds),
        "positions": "learned absolute" if spec.learned_positions else "RoPE",
        "nope_layers": [] if spec.learned_positions else nope,
        "moe_layers": moe,
        "moe": _moe(next(layer.ffn for layer in layers if isinstance(layer.ffn, MoESpec))) if moe else None,
        "context_length": context,
        "compute_dtype": dtype,
        "kv_bytes_per_token": sum(per_layer_kv),
        "kv_bytes_full_context": full_kv,
        "quantization": quantization(cfg, stored),
        "load_bytes": load_bytes,
        "full_context_bytes": load_bytes + full_kv,
        "memory_source": source,
    }


# ---------------------------------------------------------------- pieces


def _tensors(folder: Path, cfg, adapter, spec, repo: Optional[str] = None) -> dict:
    """The checkpoint's tensors from its headers (a Hub repo's fetched with range requests), checked against the
    config as the loader checks them (on placeholders: nothing is read)."""
    from mlxmodels import hub_headers
    from mlxmodels.formats.safetensors import Checkpoint, SafetensorsError
    from mlxmodels.load import build, placeholders

    try:
        ckpt = hub_headers.checkpoint(repo, folder) if repo else Checkpoint(folder)
    except SafetensorsError as e:
        if "no *.safetensors" in str(e):
            return {}
        raise
    build(folder, cfg, adapter, spec, placeholders(ckpt))
    out = {}
    for name, f in ckpt.where.items():
        t = f.tensors[name]
        numel = 1
        for s in t.shape:
            numel *= s
        out[name] = (t.dtype, numel, t.nbytes)
    ckpt.close()
    return out


class _GGUFHeader:
    """A GGUF file's header: the checkpoint the loader would build (config, placeholders) and what it stores."""

    def __init__(self, path: Path):
        from mlxmodels.formats.gguf_model import GGUFCheckpoint

        self.ckpt = GGUFCheckpoint(path)
        self.config = self.ckpt.config
        types = [t.type_name for t in self.ckpt.file.tensors.values()]
        counts = ", ".join(f"{n} {t}" for t, n in sorted(((t, types.count(t)) for t in set(types)),
                                                           key=lambda tn: -tn[1]))
        self.format = f"GGUF version {self.ckpt.file.version}, {len(types)} tensors ({counts})"

    def close(self):
        self.ckpt.close()


def _gguf_tensors(gguf: _GGUFHeader, cfg, adapter, spec) -> dict:
    """The tensors the loader makes of a GGUF file (quantized ones as weight/scales/biases), from its tensor table
    and checked against the config as the loader checks them; nothing is read."""
    from mlxmodels.formats.safetensors import dtype_name
    from mlxmodels.load import build

    _, weights = build(gguf.ckpt.path, cfg, adapter, spec, gguf.ckpt.placeholders())
    return {name: (dtype_name(w.dtype), w.size, w.nbytes) for name, w in weights.items()}


def _count(spec) -> dict:
    """Parameter counts of a lazily built Decoder (nothing is allocated)."""
    from mlx.utils import tree_flatten

    from mlxmodels.decoder import Decoder
    from mlxmodels.spec import MoESpec

    model = Decoder(spec)

    def size(module) -> int:
        return sum(p.size for _, p in tree_flatten(module.parameters()))

    total = size(model)
    mtp = sum(size(m) for m in model.mtp_modules)
    total -= mtp
    active = total
    for layer, block in zip(spec.layers, model.model.layers):
        if isinstance(layer.ffn, MoESpec):
            experts = size(getattr(block, layer.ffn_name)[layer.ffn.experts_name])
            active -= experts - experts * layer.ffn.top_k // layer.ffn.n_experts
    return {"total": total, "active": active, "mtp": mtp}


def _kind(attn) -> str:
    from mlxmodels.spec import MLASpec

    if isinstance(attn, MLASpec):
        return "MLA global"
    if attn.window is not None:
        return f"local (window {attn.window})"
    if attn.chunk is not None:
        return f"chunked ({attn.chunk})"
    return "global"


def _bound(attn) -> Optional[int]:
    """The most tokens this layer's cache keeps (None: all)."""
    return getattr(attn, "window", None) or getattr(attn, "chunk", None)


def _kv_bytes(attn, item: int) -> int:
    from mlxmodels.spec import MLASpec

    if isinstance(attn, MLASpec):
        return (attn.kv_lora_rank + attn.qk_rope_head_dim) * item
    return 2 * attn.n_kv_heads * attn.head_dim * item


def _attention(attn) -> str:
    from mlxmodels.spec import MLASpec

    if isinstance(attn, MLASpec):
        return (f"MLA, {attn.n_heads} heads, kv_lora_rank {attn.kv_lora_rank}, rope dim {attn.qk_rope_head_dim}"
                + (f", q_lora_rank {attn.q_lora_rank}" if attn.q_lora_rank else ""))
    kind = "MHA" if attn.n_kv_heads == attn.n_heads else ("MQA" if attn.n_kv_heads == 1 else "GQA")
    return f"{kind}, {attn.n_heads} heads, {attn.n_kv_heads} KV heads, head dim {attn.head_dim}"


def _moe(m) -> str:
    shared = ", shared expert" if m.shared_hidden else ""
    return f"{m.n_experts} routed experts, top {m.top_k} ({m.score} router){shared}"


def _context(cfg) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(cfg.get(key), int) and cfg[key] > 0:
            return cfg[key]
    return 4096


def _config_dtype(cfg) -> Optional[str]:
    name = cfg.get("torch_dtype") or cfg.get("dtype")
    return name if name in DTYPE_BYTES else None


def quantization(cfg, stored_floats: List[str]) -> str:
    q = cfg.get("quantization")
    if isinstance(q, dict) and q.get("bits"):
        overrides = sum(1 for v in q.values() if isinstance(v, dict) or v is False)
        text = f"{q.get('mode', 'affine')} {q['bits']}-bit, group {q.get('group_size', 64)}"
        return text + (f" ({overrides} per-layer overrides)" if overrides else "")
    hf = cfg.get("quantization_config")
    if isinstance(hf, dict) and hf.get("quant_method"):
        return f"{hf['quant_method']} (Hugging Face quantization_config)"
    floats = sorted(set(stored_floats), key=stored_floats.count, reverse=True) if stored_floats else []
    return f"none ({floats[0]} weights)" if floats else "none"


def pattern(kinds: List[str]) -> str:
    """'5 local (window 512) : 1 global' for a repeating pattern, 'all 28 global' for a uniform one."""
    n = len(kinds)
    if len(set(kinds)) == 1:
        return f"all {n} {kinds[0]}"
    for p in range(2, n + 1):
        if all(kinds[i] == kinds[i % p] for i in range(n)):
            break
    period = kinds[:p]
    runs: List[List] = []
    for k in period:
        if runs and runs[-1][0] == k:
            runs[-1][1] += 1
        else:
            runs.append([k, 1])
    if len(runs) > 1 and runs[0][0] == runs[-1][0]:  # a cycle: fold the wrap-around
        runs[-1][1] += runs[0][1]
        runs = runs[1:]
    if p == n and len(runs) > 4:  # no short period: just count each kind
        counts = {k: kinds.count(k) for k in dict.fromkeys(kinds)}
        return ", ".join(f"{c} {k}" for k, c in counts.items()) + " (irregular)"
    text = " : ".join(f"{c} {k}" for k, c in runs)
    return text if p == n else f"{text}, repeated over {n} layers"


def ranges(idx: List[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'; an arithmetic progression -> 'every 4th from 3 (3, 7, ..., 47)'."""
    if not idx:
        return "none"
    if len(idx) > 3:
        step = idx[1] - idx[0]
        if step > 1 and all(b - a == step for a, b in zip(idx, idx[1:])):
            return f"every {_ordinal(step)} from {idx[0]} ({idx[0]}, {idx[1]}, ..., {idx[-1]})"
    out, start = [], idx[0]
    for a, b in zip(idx, idx[1:] + [None]):
        if b != a + 1:
            out.append(str(start) if start == a else f"{start}-{a}")
            start = b
    return ", ".join(out)


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def human_count(n: int) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def human_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def format_report(r: dict) -> str:
    n = r["layers"]
    params = f"{human_count(r['params_total'])} total, {human_count(r['params_active'])} active per token"
    if r["params_mtp"]:
        params += f" (+ {human_count(r['params_mtp'])} in MTP modules)"
    moe = "none"
    if r["moe_layers"]:
        moe = f"{ranges(r['moe_layers'])} ({len(r['moe_layers'])} of {n}): {r['moe']}"
    nope = f"{ranges(r['nope_layers'])} ({len(r['nope_layers'])} of {n})" if r["nope_layers"] else "none"
    if r["positions"] != "RoPE":
        nope = f"none (positions: {r['positions']})"
    rows = [
        ("model", r["model"]),
        *([("format", r["format"])] if "format" in r else []),
        ("family", f"{r['family']} ({r['architecture']})" if r["architecture"] else r["family"]),
        ("parameters", params),
        ("layers", f"{n} (hidden {r['hidden_size']}, vocab {r['vocab_size']})"),
        ("attention", r["attention"]),
        ("pattern", r["pattern"]),
        ("NoPE layers", nope),
        ("MoE layers", moe),
        ("context", f"{r['context_length']} tokens"),
        ("KV cache", f"{human_bytes(r['kv_bytes_per_token'])} per token ({r['compute_dtype']}), "
                     f"{human_bytes(r['kv_bytes_full_context'])} at full context"),
        ("quantization", r["quantization"]),
        ("memory", f"{human_bytes(r['load_bytes'])} to load, {human_bytes(r['full_context_bytes'])} at full context "
                   f"(weights + KV cache, computing in {r['compute_dtype']})"),
    ]
    if r["memory_source"] != "checkpoint":
        rows.append(("note", f"memory is a {r['memory_source']}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
