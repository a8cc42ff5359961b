"""GGUF metadata -> a Hugging Face config.json dict, so the family adapters (and their checks) build the model as
they build any other: nothing downstream knows the weights came from a GGUF file.

The keys are llama.cpp's (`<arch>.block_count`, ...), renamed as transformers' GGUF loader renames them
(transformers/integrations/ggml.py); what a GGUF does not store takes the family's transformers default (its
adapter's DEFAULTS). The result is checked by config_check like a config.json before any adapter runs.
"""

from __future__ import annotations

from . import gguf_rope
from .gguf import GGUFError, GGUFFile
from .gguf_quant import GROUP, bits

_COMMON = {
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
}
_EXPERTS = {"expert_count": "num_experts", "expert_used_count": "num_experts_per_tok",
            "expert_feed_forward_length": "moe_intermediate_size"}
_GEMMA = {**_COMMON, "attention.sliding_window": "sliding_window",
          "final_logit_softcapping": "final_logit_softcapping"}
# DeepSeek-V2/V3 store MLA as MQA: head_count_kv is 1 and key_length/value_length are the latent row's (newer
# files; their *_mla keys give the heads'), so neither is read as the usual keys
_DEEPSEEK = {**{k: v for k, v in _COMMON.items() if not k.startswith(("attention.head_count_kv", "attention.key"))},
             "leading_dense_block_count": "first_k_dense_replace", "attention.q_lora_rank": "q_lora_rank",
             "attention.kv_lora_rank": "kv_lora_rank", "expert_feed_forward_length": "moe_intermediate_size",
             "expert_count": "n_routed_experts", "expert_shared_count": "n_shared_experts",
             "expert_used_count": "num_experts_per_tok", "expert_weights_scale": "routed_scaling_factor",
             "expert_weights_norm": "norm_topk_prob", "expert_group_count": "n_group",
             "expert_group_used_count": "topk_group", "rope.dimension_count": "qk_rope_head_dim"}

# GGUF architecture -> (Hugging Face model_type, {GGUF key after "<arch>.": config key})
ARCHITECTURES = {
    "llama": ("llama", {**_COMMON, "expert_count": "num_local_experts", "expert_used_count": "num_experts_per_tok"}),
    "smollm3": ("smollm3", _COMMON),
    "qwen2": ("qwen2", _COMMON),
    "qwen3": ("qwen3", _COMMON),
    "qwen3moe": ("qwen3_moe", {**_COMMON, **_EXPERTS}),
    "gemma2": ("gemma2", {**_GEMMA, "attn_logit_softcapping": "attn_logit_softcapping"}),
    "gemma3": ("gemma3_text", {**_GEMMA, "rope.freq_base_swa": "rope_local_base_freq"}),
    "olmo2": ("olmo2", _COMMON),
    "deepseek2": ("deepseek_v2", _DEEPSEEK),
    "gpt2": ("gpt2", {"context_length": "n_positions", "block_count": "n_layer", "embedding_length": "n_embd",
                      "feed_forward_length": "n_inner", "attention.head_count": "n_head",
                      "attention.layer_norm_epsilon": "layer_norm_epsilon"}),
    "llama4": ("llama4_text", {**_COMMON, "feed_forward_length": "intermediate_size_mlp",
                               "expert_feed_forward_length": "intermediate_size", "expert_count": "num_local_experts",
                               "expert_used_count": "num_experts_per_tok",
                               "interleave_moe_layer_step": "interleave_moe_layer_step"}),
}
FLOATS = {"rms_norm_eps", "rope_theta", "layer_norm_epsilon", "attn_logit_softcapping", "final_logit_softcapping",
          "rope_local_base_freq", "routed_scaling_factor"}
BOOLS = {"norm_topk_prob"}
# a GGUF tensor our adapter splits: the quantization entry names the modules it becomes
SPLIT_MODULES = {"self_attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")}
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
    """The config dict: architecture keys, tied embeddings (no `output` tensor), RoPE, token ids, what llama.cpp
    fixes in code for the architecture, and mlx-lm's `quantization` entry for the layers kept quantized
    (`quantized`: HF module path -> ggml type)."""
    arch = architecture(g)
    model_type, keys = ARCHITECTURES[arch]
    cfg = {"model_type": model_type}
    for key, name in keys.items():
        if f"{arch}.{key}" in g.metadata:
            cfg[name] = g.get(f"{arch}.{key}", float if name in FLOATS else bool if name in BOOLS else int)
    if "token_embd.weight" in g.tensors:  # Gemma 3 files drop the padding rows past the tokenizer's vocabulary
        cfg.setdefault("vocab_size", g.tensors["token_embd.weight"].shape[-1])
    cfg["tie_word_embeddings"] = "output.weight" not in g.tensors
    _rope(g, arch, cfg)
    FIXES.get(arch, lambda g, arch, cfg: None)(g, arch, cfg)
    for name, key in TOKEN_IDS.items():
        if key in g.metadata:
            cfg[name] = g.get(key, int)
    if quantized:
        cfg["quantization"] = _quantization(_split(quantized))
    return cfg


def _rope(g: GGUFFile, arch: str, cfg: dict) -> None:
    dims = g.get(f"{arch}.rope.dimension_count", int)
    if arch == "deepseek2":  # RoPE covers qk_rope_head_dim of each head by design (read as that key)
        dims = None
    if dims is not None and "head_dim" not in cfg:
        cfg["head_dim"] = dims  # transformers reads llama's head_dim from here
    if dims is not None and dims != cfg["head_dim"]:
        raise GGUFError(f"{g.path}: '{arch}.rope.dimension_count' is {dims} but the heads have {cfg['head_dim']} "
                        "dimensions; partial RoPE is not read for this architecture yet")
    if gguf_rope.NAME in g.tensors:  # llama.cpp stores Llama 3.1's rope_scaling as per-frequency factors
        scaling = gguf_rope.llama3_scaling(g, arch, _rotated_dims(g, arch, cfg), cfg.get("rope_theta", 10000.0))
        if scaling is not None:
            cfg["rope_scaling"] = scaling
        return
    kind = g.get(f"{arch}.rope.scaling.type", str, "none")
    factor = g.get(f"{arch}.rope.scaling.factor", float)
    if kind == "linear":
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": factor}
    elif kind == "yarn":
        cfg["rope_scaling"] = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings":
                               g.get(f"{arch}.rope.scaling.original_context_length", int)}
        for key, name in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            if f"{arch}.rope.scaling.{key}" in g.metadata:
                cfg["rope_scaling"][name] = g.get(f"{arch}.rope.scaling.{key}", float)
    elif kind != "none":
        raise GGUFError(f"{g.path}: RoPE scaling {kind!r} ('{arch}.rope.scaling.type') is not read from GGUF yet; "
                        "use the model's Hugging Face folder instead")


def _rotated_dims(g: GGUFFile, arch: str, cfg: dict) -> int:
    """The head dim the rope_freqs factors cover: the file's, or hidden / heads as transformers derives it."""
    dims = cfg.get("head_dim")
    hidden, heads = cfg.get("hidden_size"), cfg.get("num_attention_heads")
    if dims is None and isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads == 0:
        dims = hidden // heads
    if not isinstance(dims, int) or dims <= 0 or dims % 2:
        raise GGUFError(f"{g.path}: tensor 'rope_freqs.weight' needs the head dim ('{arch}.rope.dimension_count', or "
                        f"'{arch}.embedding_length' and '{arch}.attention.head_count'); the file is damaged")
    return dims


def _llama(g: GGUFFile, arch: str, cfg: dict) -> None:
    if cfg.get("num_local_experts"):  # Mixtral is stored as llama with experts
        cfg["model_type"] = "mixtral"
    if "blk.0.attn_q.bias" in g.tensors:  # no key says it: llama.cpp loads the biases where the file has them
        cfg["attention_bias"] = True


def _gemma(g: GGUFFile, arch: str, cfg: dict) -> None:
    """llama.cpp scales queries by 1/sqrt(head_dim), except the 27B models (46 layers in Gemma 2, 62 in Gemma 3),
    by 1/sqrt(hidden / heads): their query_pre_attn_scalar, which GGUF does not store. Gemma 3's local layers rotate
    with base 10000 unless the file says otherwise, every 6th layer global; without a window, every layer is."""
    big = cfg.get("num_hidden_layers") == {"gemma2": 46, "gemma3": 62}[arch]
    if "head_dim" in cfg and "hidden_size" in cfg and cfg.get("num_attention_heads"):
        cfg["query_pre_attn_scalar"] = cfg["hidden_size"] // cfg["num_attention_heads"] if big else cfg["head_dim"]
    if arch == "gemma3":
        cfg.setdefault("rope_local_base_freq", 10000.0)
        cfg["sliding_window_pattern"] = 6 if "sliding_window" in cfg else 1


def _deepseek(g: GGUFFile, arch: str, cfg: dict) -> None:
    """MLA head sizes (newer files: *_mla keys; older: key/value length), q LoRA absent = none, routing: sigmoid
    gating (expert_gating_func 2) is DeepSeek-V3's noaux_tc, softmax with groups V2's group-limited greedy; YaRN's
    attention scaling from llama.cpp's log multiplier (0.1 * mscale_all_dim); MTP modules: llama.cpp counts them
    in block_count, after the main layers, and says how many in nextn_predict_layers."""
    nextn = g.get(f"{arch}.nextn_predict_layers", int) or 0
    if nextn:
        layers = cfg.get("num_hidden_layers")
        if not isinstance(layers, int) or not 0 < nextn < layers:
            raise GGUFError(f"{g.path}: '{arch}.nextn_predict_layers' is {nextn}, not fewer than the {layers} blocks "
                            f"('{arch}.block_count'); the file is damaged, re-download it")
        cfg.update(num_hidden_layers=layers - nextn, num_nextn_predict_layers=nextn)
    p = f"{arch}.attention."
    key = g.get(p + "key_length_mla", int) or g.get(p + "key_length", int)
    value = g.get(p + "value_length_mla", int) or g.get(p + "value_length", int)
    if key is not None and "qk_rope_head_dim" in cfg:
        cfg["qk_nope_head_dim"] = key - cfg["qk_rope_head_dim"]
    if value is not None:
        cfg["v_head_dim"] = value
    cfg.setdefault("q_lora_rank", None)
    cfg.setdefault("norm_topk_prob", False)
    cfg.setdefault("routed_scaling_factor", 1.0)
    if g.get(f"{arch}.expert_gating_func", int) == 2:
        cfg["model_type"] = "deepseek_v3"
    else:
        cfg["topk_method"] = "group_limited_greedy" if (cfg.get("n_group") or 1) > 1 else "greedy"
    mul = g.get(f"{arch}.rope.scaling.yarn_log_multiplier", float)
    if mul and "rope_scaling" in cfg:
        mscale = float(f"{mul / 0.1:.6g}")  # stored float32: 0.1 * 0.707 comes back as 0.0707000017
        cfg["rope_scaling"].update(mscale=mscale, mscale_all_dim=mscale)


def _qwen3moe(g: GGUFFile, arch: str, cfg: dict) -> None:
    cfg["norm_topk_prob"] = True  # llama.cpp always renormalises Qwen3-MoE's top-k weights (as transformers reads it)


def _llama4(g: GGUFFile, arch: str, cfg: dict) -> None:
    """llama.cpp: a sliding_window of 0 means no chunked layers and RoPE on every layer; QK-norm off on the
    128-expert model (Maverick)."""
    if g.get(f"{arch}.attention.sliding_window", int, None) == 0:
        cfg.update(attention_chunk_size=None, no_rope_layers=[1] * cfg.get("num_hidden_layers", 0))
    if cfg.get("num_local_experts") == 128:
        cfg["use_qk_norm"] = False


FIXES = {"llama": _llama, "qwen3moe": _qwen3moe, "gemma2": _gemma, "gemma3": _gemma, "deepseek2": _deepseek, "llama4": _llama4}


def _split(quantized: dict) -> dict:
    """Module path -> ggml type, a tensor the adapter splits (SPLIT_MODULES) named as the modules it becomes."""
    out = {}
    for path, ggml_type in quantized.items():
        stem = next((s for s in SPLIT_MODULES if path.endswith(f".{s}")), None)
        paths = [path[: -len(stem)] + module for module in SPLIT_MODULES[stem]] if stem else [path]
        out.update(dict.fromkeys(paths, ggml_type))
    return out


def _quantization(quantized: dict) -> dict:
    """The most common width is the default; modules of another width get an override, as mlx-lm writes them."""
    widths = [bits(t) for t in quantized.values()]
    common = max(set(widths), key=widths.count)
    q = {"group_size": GROUP, "bits": common}
    for path, ggml_type in quantized.items():
        if bits(ggml_type) != common:
            q[path] = {"group_size": GROUP, "bits": bits(ggml_type)}
    return q
