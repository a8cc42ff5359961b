"""GGUF metadata -> a Hugging Face config.json dict, so the family adapters (and their checks) build the model as
they build any other: nothing downstream knows the weights came from a GGUF file.

The keys are llama.cpp's (`<arch>.block_count`, ...), renamed as transformers' GGUF loader renames them
(transformers/integrations/ggml.py); what a GGUF does not store takes the family's transformers default (its
adapter's DEFAULTS). The result is checked by config_check like a config.json before any adapter runs.
"""

from __future__ import annotations

from .gguf import GGUFError, GGUFFile
from .gguf_quant import GROUP, bits

# GGUF architecture -> (Hugging Face model_type, {GGUF key after "<arch>.": config key})
ARCHITECTURES = {
    "llama": ("llama", {
        "context_length": "max_position_embeddings",
        "block_count": "num_hidden_layers",
        "feed_forward_length": "intermediate_size",
        "embedding_length": "hidden_size",
        "attention.head_count": "num_attention_heads",
        "attention.head_count_kv": "num_key_value_heads",
        "attention.layer_norm_rms_epsilon": "rms_norm_eps",
        "attention.key_length": "head_dim",
        "rope.freq_base": "rope_theta",
        "vocab_size": "vocab_size",
    }),
}
TOKEN_IDS = {"bos_token_id": "tokenizer.ggml.bos_token_id", "eos_token_id": "tokenizer.ggml.eos_token_id",
             "pad_token_id": "tokenizer.ggml.padding_token_id"}


def architecture(g: GGUFFile) -> str:
    arch = g.get("general.architecture", str)
    if arch is None:
        raise GGUFError(f"{g.path} has no 'general.architecture' metadata; the file is damaged or not a model, "
                        "re-download it")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{g.path}: GGUF architecture {arch!r} is not supported (supported: "
                        f"{', '.join(ARCHITECTURES)}); use a Hugging Face folder of the model instead")
    if (g.get("split.count", int) or 1) > 1:
        raise GGUFError(f"{g.path} is one part of a split GGUF ({g.get('split.count', int)} files); merge the parts "
                        "first (llama-gguf-split --merge FIRST-PART OUT.gguf) and load the merged file")
    return arch


def config(g: GGUFFile, quantized: dict) -> dict:
    """The config dict: architecture keys, tied embeddings (no `output` tensor), RoPE, token ids, and mlx-lm's
    `quantization` entry for the layers kept quantized (`quantized`: HF module path -> ggml type)."""
    arch = architecture(g)
    model_type, keys = ARCHITECTURES[arch]
    cfg = {"model_type": model_type}
    for key, name in keys.items():
        if f"{arch}.{key}" in g.metadata:
            cfg[name] = g.get(f"{arch}.{key}", float if name in ("rms_norm_eps", "rope_theta") else int)
    if "vocab_size" not in cfg and "token_embd.weight" in g.tensors:
        cfg["vocab_size"] = g.tensors["token_embd.weight"].shape[-1]
    cfg["tie_word_embeddings"] = "output.weight" not in g.tensors
    _rope(g, arch, cfg)
    for name, key in TOKEN_IDS.items():
        if key in g.metadata:
            cfg[name] = g.get(key, int)
    if quantized:
        cfg["quantization"] = _quantization(quantized)
    return cfg


def _rope(g: GGUFFile, arch: str, cfg: dict) -> None:
    dims = g.get(f"{arch}.rope.dimension_count", int)
    if dims is not None and "head_dim" not in cfg:
        cfg["head_dim"] = dims  # transformers reads llama's head_dim from here
    if dims is not None and dims != cfg["head_dim"]:
        raise GGUFError(f"{g.path}: '{arch}.rope.dimension_count' is {dims} but the heads have {cfg['head_dim']} "
                        "dimensions; partial RoPE is not read for this architecture yet")
    if "rope_freqs.weight" in g.tensors:
        raise GGUFError(f"{g.path} stores RoPE frequency factors (rope_freqs, Llama 3.1-style scaling), which "
                        "mlxmodels does not read from GGUF yet; use the model's Hugging Face folder instead")
    kind = g.get(f"{arch}.rope.scaling.type", str, "none")
    if kind == "linear":
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": g.get(f"{arch}.rope.scaling.factor", float)}
    elif kind != "none":
        raise GGUFError(f"{g.path}: RoPE scaling {kind!r} ('{arch}.rope.scaling.type') is not read from GGUF yet; "
                        "use the model's Hugging Face folder instead")


def _quantization(quantized: dict) -> dict:
    """The most common width is the default; modules of another width get an override, as mlx-lm writes them."""
    widths = [bits(t) for t in quantized.values()]
    common = max(set(widths), key=widths.count)
    q = {"group_size": GROUP, "bits": common}
    for path, ggml_type in quantized.items():
        if bits(ggml_type) != common:
            q[path] = {"group_size": GROUP, "bits": bits(ggml_type)}
    return q
