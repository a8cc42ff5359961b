"""SmolLM3 = Llama, except NoPE (no rotary embedding) on layers where `no_rope_layers[i]` is 0 (every 4th by default)."""

from dataclasses import replace

from ..config import HFConfig
from . import llama


def spec(cfg: HFConfig):
    n = cfg.require("num_hidden_layers")
    interval = cfg.get("no_rope_layer_interval", 4)
    uses_rope = cfg.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
    default_types = ["sliding_attention" if cfg.get("use_sliding_window") and cfg.get("sliding_window") and not uses_rope[i]
                     else "full_attention" for i in range(n)]
    base = llama.spec(cfg, default_layer_types=default_types)
    return llama.map_attn(base, lambda i, a: a if uses_rope[i] else replace(a, rope=None))
