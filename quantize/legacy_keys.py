"""The older config.json keys mlx-lm reads, added next to the transformers-5 keys a source has.

transformers 5 writes `rope_parameters` (one dict, or one per layer type for Gemma 3), `layer_types` and a few new
spellings; mlx-lm's ModelArgs read `rope_theta`/`rope_scaling`, `rope_local_base_freq`, `sliding_window_pattern`,
`num_experts`, `n_ctx`, and silently take their own defaults for a key they do not find (a llama3-scaled Llama then
runs plain RoPE: logits off by 1.76). So a folder we write carries both spellings, saying the same thing.

Only absent keys are added (a key holding null counts as absent: it says nothing, and transformers reads it so);
a key the source has is never changed. transformers 5 itself prefers a non-null `rope_scaling` (with `rope_theta`)
over `rope_parameters` when a config has both, so the two must agree exactly: they are derived from one another.
What the older keys cannot say is left out rather than guessed: a `layer_types` that is not "every P-th layer
global" has no `sliding_window_pattern`, and Gemma 3's local layers have a base but no scaling of their own.
"""

from __future__ import annotations

# Keys spelled differently, per model_type: the transformers-5 key -> the older one mlx-lm reads (value copied).
RENAMED = {
    "qwen3_moe": {"num_local_experts": "num_experts"},
    "gpt2": {"n_positions": "n_ctx"},  # GPT-2 configs used to carry both, equal; mlx-lm requires n_ctx
}
# Families whose mlx-lm model reads the local:global layout as `sliding_window_pattern` (not `layer_types`).
PATTERN = {"gemma3_text"}
# transformers 5 key for one rope dict per layer type: which entry becomes which older key.
PER_LAYER_TYPE = ("full_attention", "sliding_attention")


def add_legacy_keys(cfg: dict) -> dict:
    """A copy of cfg with the older spellings of its transformers-5 keys added where absent (text_config too)."""
    out = dict(cfg)
    if isinstance(out.get("text_config"), dict):  # multimodal wrappers (Gemma 3, Llama 4): the decoder's config
        out["text_config"] = add_legacy_keys(out["text_config"])
    for key, value in legacy_values(out).items():
        if out.get(key) is None:
            out[key] = value
    return out


def legacy_values(cfg: dict) -> dict:
    """The older keys implied by cfg's newer ones (whether or not cfg already has them)."""
    values = {}
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict) and any(isinstance(rope.get(t), dict) for t in PER_LAYER_TYPE):
        values.update(rope_values(rope.get("full_attention") or {}))
        if isinstance(rope.get("sliding_attention"), dict) and "rope_theta" in rope["sliding_attention"]:
            values["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
    elif isinstance(rope, dict):
        values.update(rope_values(rope))
    model_type = cfg.get("model_type")
    if model_type in PATTERN and (every := pattern(cfg.get("layer_types"))):
        values["sliding_window_pattern"] = every
    for new, old in RENAMED.get(model_type, {}).items():
        if cfg.get(new) is not None:
            values[old] = cfg[new]
    return values


def rope_values(params: dict) -> dict:
    """One rope_parameters dict -> rope_theta, rope_scaling (null for plain RoPE, as older configs wrote it) and
    partial_rotary_factor. The scaling carries both `type` and `rope_type`: older mlx-lm families read `type`."""
    params = dict(params)
    values = {}
    if "rope_theta" in params:
        values["rope_theta"] = params.pop("rope_theta")
    if "partial_rotary_factor" in params:
        values["partial_rotary_factor"] = params["partial_rotary_factor"]
    kind = params.get("rope_type") or params.get("type") or "default"
    values["rope_scaling"] = None if kind == "default" else {**params, "rope_type": kind, "type": kind}
    return values


def pattern(layer_types) -> int | None:
    """`layer_types` as Gemma 3's older `sliding_window_pattern` P (layer i is global iff (i + 1) % P == 0), or None
    when it is not of that form. At least one layer must be global: mlx-lm indexes the first global layer."""
    if not isinstance(layer_types, list) or "full_attention" not in layer_types:
        return None
    every = layer_types.index("full_attention") + 1
    want = ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(len(layer_types))]
    return every if layer_types == want else None
