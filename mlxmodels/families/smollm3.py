"""SmolLM3 = Llama, except NoPE (no rotary embedding) on layers where `no_rope_layers[i]` is 0 (every 4th by default)
and, by default, a tied head."""

from dataclasses import replace

from ..config import HFConfig
from . import llama

# transformers' SmolLM3Config
DEFAULTS = dict(vocab_size=128256, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                num_attention_heads=16, num_key_value_heads=4, hidden_act="silu", max_position_embeddings=32768,
                rms_norm_eps=1e-6, use_sliding_window=False, no_rope_layer_interval=4, attention_bias=False,
                mlp_bias=False, tie_word_embeddings=True, rope_theta=2e6)


def spec(cfg: HFConfig):
    n = cfg.require("num_hidden_layers")
    interval = cfg.require("no_rope_layer_interval")
    uses_rope = cfg.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
    slides = cfg.get("use_sliding_window") and cfg.get("sliding_window")
    default_types = ["sliding_attention" if slides and not uses_rope[i] else "full_attention" for i in range(n)]
    base = llama.spec(cfg, default_layer_types=default_types)
    return llama.map_attn(base, lambda i, a: a if uses_rope[i] else replace(a, rope=None))
