"""config.json checked before any adapter runs: each key a family reads, its type and range, as data.

A config comes from a stranger. Without these checks a string where a count belongs raises deep inside an adapter,
a NaN eps or a zero RoPE base runs and prints garbage, and 10^6 layers or a 10^12 hidden size would have us build a
model for minutes before the weights disagree. The bounds are far above any published model (the largest today:
126 layers, hidden 16384, 384 experts, a 262k vocabulary, 10M positions) and far below what would hurt.
Relations that hold whichever spelling a family uses (heads divisible by KV heads, top-k within the experts) are
checked on the built spec (`check_spec`). Every refusal is one line: the file, the key, the value, what is accepted.
"""

from __future__ import annotations

import math

from .errors import ModelError

LAYERS, HIDDEN, FFN, HEADS, HEAD_DIM = 1024, 1 << 17, 1 << 20, 1024, 2048
VOCAB, POSITIONS, EXPERTS = 1 << 22, 1 << 26, 4096
QUANT_MODES = {"affine": ((2, 3, 4, 5, 6, 8), (32, 64, 128)), "mxfp4": ((4,), (32,)), "mxfp8": ((8,), (32,)),
               "nvfp4": ((4,), (16,))}
LAYER_TYPES = ("full_attention", "sliding_attention", "chunked_attention")
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


class ConfigError(ModelError):
    """A config.json that cannot describe a model we can build."""


# Rules: ("count", lo, hi) a whole number; ("real", lo, hi, open_low) a finite number; ("bool",); ("text",);
# ("ids",) token ids (a whole number >= 0 or a list of them); ("counts", hi) a list of whole numbers in [0, hi];
# ("flag",) true/false, or a number read for its truth (Llama 4 publishes attn_temperature_tuning: 4).
# A key set to null is not checked: `HFConfig.get` reads it as None (no window, no LoRA rank), `require` as absent.
def count(lo, hi):
    return ("count", lo, hi)


def positive(hi=math.inf):
    return ("real", 0.0, hi, True)


KEYS = {
    **{k: count(1, LAYERS) for k in ("num_hidden_layers", "n_layer")},
    **{k: count(1, HIDDEN) for k in ("hidden_size", "n_embd", "kv_lora_rank", "q_lora_rank")},
    **{k: count(1, FFN) for k in ("intermediate_size", "n_inner", "moe_intermediate_size", "intermediate_size_mlp",
                                   "shared_expert_intermediate_size")},
    **{k: count(1, HEADS) for k in ("num_attention_heads", "n_head", "num_key_value_heads")},
    **{k: count(1, HEAD_DIM) for k in ("head_dim", "qk_rope_head_dim", "v_head_dim")},
    "qk_nope_head_dim": count(0, HEAD_DIM),
    "vocab_size": count(1, VOCAB),
    **{k: count(1, POSITIONS) for k in ("max_position_embeddings", "n_positions", "n_ctx", "attention_chunk_size")},
    "sliding_window": count(0, POSITIONS),  # transformers writes 0 for Qwen2-MoE without a window (check_spec: used)
    **{k: count(1, EXPERTS) for k in ("num_experts", "n_routed_experts", "num_local_experts", "num_experts_per_tok",
                                      "n_group", "topk_group")},
    "n_shared_experts": count(0, EXPERTS),
    **{k: count(0, LAYERS) for k in ("first_k_dense_replace", "num_nextn_predict_layers")},
    **{k: count(1, LAYERS) for k in ("moe_layer_freq", "decoder_sparse_step", "interleave_moe_layer_step",
                                     "no_rope_layer_interval", "sliding_window_pattern")},
    "max_window_layers": count(0, POSITIONS),  # a threshold only; Qwen2 configs exceed their layer count
    **{k: ("real", 0.0, 1.0, True) for k in ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps")},
    **{k: positive() for k in ("rope_theta", "rope_local_base_freq", "routed_scaling_factor", "attn_logit_softcapping",
                               "final_logit_softcapping", "query_pre_attn_scalar", "floor_scale")},
    "attn_scale": ("real", 0.0, math.inf, False),
    "partial_rotary_factor": ("real", 0.0, 1.0, True),
    **{k: ("bool",) for k in ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window",
                              "norm_topk_prob", "use_qk_norm", "rope_interleave")},
    "attn_temperature_tuning": ("flag",),
    **{k: ("text",) for k in ("model_type", "hidden_act", "hidden_activation", "topk_method", "scoring_func")},
    **{k: ("ids",) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
    **{k: ("counts", LAYERS) for k in ("mlp_only_layers", "moe_layers", "no_rope_layers")},
}
# generation_config.json: what the sampler and the stop rule take from it
GENERATION_KEYS = {
    "temperature": ("real", 0.0, math.inf, False), "top_p": ("real", 0.0, 1.0, True), "top_k": count(0, VOCAB),
    "min_p": ("real", 0.0, 1.0, False), "repetition_penalty": positive(), "do_sample": ("bool",),
    "max_new_tokens": count(1, POSITIONS), "max_length": count(1, POSITIONS),
    **{k: ("ids",) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
}
# tokenizer_config.json: special tokens are text or {"content": text, ...}; templates text or [{name, template}]
TOKENIZER_KEYS = {
    **{k: ("token",) for k in ("bos_token", "eos_token", "unk_token", "pad_token")},
    **{k: ("bool",) for k in ("add_bos_token", "add_eos_token")},
    "chat_template": ("template",), "added_tokens_decoder": ("object",),
}
ROPE_KEYS = {
    "rope_theta": positive(), "factor": positive(), "original_max_position_embeddings": count(1, POSITIONS),
    "low_freq_factor": positive(), "high_freq_factor": positive(), "beta_fast": positive(), "beta_slow": positive(),
    "attention_factor": positive(), "mscale": ("real", 0.0, math.inf, False),
    "mscale_all_dim": ("real", 0.0, math.inf, False), "partial_rotary_factor": ("real", 0.0, 1.0, True),
    "truncate": ("bool",),
}


def check_keys(cfg: dict, rules: dict, where: str, prefix: str = "") -> None:
    for key, rule in rules.items():
        if cfg.get(key) is not None:
            check_value(cfg[key], rule, where, prefix + key)


def check_config(cfg: dict, where: str, prefix: str = "") -> None:
    """Types and ranges of every key we read; `prefix` names the nesting (`text_config.`) in errors."""
    check_keys(cfg, KEYS, where, prefix)
    n = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    types = cfg.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or not all(t in LAYER_TYPES for t in types):
            fail(where, prefix + "layer_types", types, f"a list of {', '.join(LAYER_TYPES)}")
        if isinstance(n, int) and len(types) < n:
            fail(where, prefix + "layer_types", Raw(f"{len(types)} entries"), f"one per layer ({n})")
    for key in ("rope_scaling", "rope_parameters"):
        if cfg.get(key) is not None:
            _check_rope(cfg[key], where, prefix + key)
    for key in ("quantization", "quantization_config"):
        if cfg.get(key) is not None:
            check_quantization(cfg[key], where, prefix + key)


def check_value(value, rule, where: str, key: str) -> None:
    kind = rule[0]
    if kind == "count":
        lo, hi = rule[1], rule[2]
        if not _is_int(value) or not lo <= value <= hi:
            fail(where, key, value, f"a whole number from {lo} to {hi}")
    elif kind == "real":
        lo, hi, open_low = rule[1:]
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (lo < value if open_low else lo <= value) and value <= hi)
        if not ok:
            bound = f"> {lo:g}" if open_low else f">= {lo:g}"
            fail(where, key, value, f"a finite number {bound}" + (f" and <= {hi:g}" if hi != math.inf else ""))
    elif kind == "bool":
        if not isinstance(value, bool):
            fail(where, key, value, "true or false")
    elif kind == "flag":
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not isinstance(value, bool) and not (number and value >= 0):
            fail(where, key, value, "true, false or a number >= 0")
    elif kind == "text":
        if not isinstance(value, str):
            fail(where, key, value, "a string")
    elif kind == "ids":
        values = value if isinstance(value, list) else [value]
        if not values or not all(_is_int(v) and 0 <= v < VOCAB for v in values):
            fail(where, key, value, "a token id (a whole number >= 0) or a list of them")
    elif kind == "token":
        text = value.get("content") if isinstance(value, dict) else value
        if not isinstance(text, str):
            fail(where, key, value, 'a token as text, {"content": text}, or null')
    elif kind == "template":
        named = isinstance(value, list) and all(
            isinstance(t, dict) and isinstance(t.get("template"), str) for t in value)
        if not (isinstance(value, str) or named):
            fail(where, key, value, 'template text or a list of {"name", "template"} objects')
    elif kind == "object":
        if not isinstance(value, dict):
            fail(where, key, value, "an object")
    elif kind == "counts":
        if not isinstance(value, list) or not all(_is_int(v) and 0 <= v <= rule[1] for v in value):
            fail(where, key, value, f"a list of whole numbers from 0 to {rule[1]}")


def _check_rope(value, where: str, key: str) -> None:
    if not isinstance(value, dict):
        fail(where, key, value, "an object of RoPE parameters or null")
    if value and all(isinstance(v, dict) for v in value.values()):  # transformers 5: one entry per layer type
        for layer_type, params in value.items():
            _check_rope(params, where, f"{key}.{layer_type}")
        return
    kind = value.get("rope_type", value.get("type"))
    if kind is not None and kind not in ROPE_TYPES:
        fail(where, f"{key}.rope_type", kind, ", ".join(ROPE_TYPES))
    for name, rule in ROPE_KEYS.items():
        if value.get(name) is not None:
            check_value(value[name], rule, where, f"{key}.{name}")
    if kind in ("linear", "dynamic", "llama3", "yarn") and value.get("factor") is None:
        fail(where, f"{key}.factor", None, f"a finite number > 0 (rope_type {kind} needs it)")


def check_quantization(q, where: str, key: str) -> None:
    """mlx-lm's entry: mode, bits, group_size, and per-module overrides (an object of the same, or false)."""
    if not isinstance(q, dict):
        fail(where, key, q, "an object")
    if "bits" not in q:  # Hugging Face's quantization_config (FP8 and others): read by the FP8 path, not here
        return
    _check_params(q, where, key)
    for name, v in q.items():
        if isinstance(v, dict):
            _check_params({"mode": q.get("mode", "affine"), "group_size": 64, **v}, where, f"{key}.{name}")
        elif "." in name and not isinstance(v, bool):  # a module path: MLX takes an override object or a bool
            fail(where, f"{key}.{name}", v, "an object of bits/group_size/mode, or true/false")


def _check_params(q: dict, where: str, key: str) -> None:
    mode = q.get("mode", "affine")
    if mode not in QUANT_MODES:
        fail(where, f"{key}.mode", mode, ", ".join(QUANT_MODES))
    bits, groups = QUANT_MODES[mode]
    if q.get("bits") not in bits or isinstance(q.get("bits"), bool):
        fail(where, f"{key}.bits", q.get("bits"), f"one of {', '.join(map(str, bits))} for {mode}")
    if q.get("group_size", 64) not in groups or isinstance(q.get("group_size"), bool):
        fail(where, f"{key}.group_size", q.get("group_size"), f"one of {', '.join(map(str, groups))} for {mode}")


# ---------------------------------------------------------------- the built spec


def check_spec(spec, where: str) -> None:
    """Relations between sizes, on the spec an adapter built (whichever config spelling produced them)."""
    from .spec import MLASpec, MoESpec

    for i, layer in enumerate(spec.layers + tuple(spec.mtp)):
        a, f = layer.attn, layer.ffn
        if isinstance(a, MLASpec):
            if a.rope.dims % 2:
                fail(where, "qk_rope_head_dim", a.rope.dims, "an even number (RoPE rotates pairs)")
        else:
            if a.window is not None and a.window < 1:
                fail(where, "sliding_window", a.window, "a whole number >= 1 on a model with sliding layers")
            if a.n_heads % a.n_kv_heads:
                fail(where, "num_key_value_heads", a.n_kv_heads,
                     f"a divisor of num_attention_heads ({a.n_heads})")
            if a.rope is not None and (a.rope.dims % 2 or not 0 < a.rope.dims <= a.head_dim):
                fail(where, "partial_rotary_factor", Raw(f"{a.rope.dims} rotated dims of head_dim {a.head_dim}"),
                     "an even number of rotated dims, at most head_dim")
        if isinstance(f, MoESpec):
            if f.top_k > f.n_experts:
                fail(where, "num_experts_per_tok", f.top_k, f"at most the number of experts ({f.n_experts})")
            if f.n_group:
                if f.n_experts % f.n_group:
                    fail(where, "n_group", f.n_group, f"a divisor of the number of experts ({f.n_experts})")
                if not (f.topk_group or 1) <= f.n_group:
                    fail(where, "topk_group", f.topk_group, f"at most n_group ({f.n_group})")
                if (f.topk_group or 1) * f.n_experts // f.n_group < f.top_k:
                    fail(where, "topk_group", f.topk_group,
                         f"enough groups to hold num_experts_per_tok ({f.top_k}) experts")


def fail(where: str, key: str, value, accepted: str):
    raise ConfigError(f"{where}: {key} is {_short(value)}; expected {accepted}")


class Raw(str):
    """A description to print as is, not a value to quote."""


def _short(value) -> str:
    text = value if isinstance(value, Raw) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
