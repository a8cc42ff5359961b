"""Qwen2 = Llama, except q/k/v projections carry a bias (o_proj does not); sliding layers per `layer_types`."""

from dataclasses import replace

from ..config import HFConfig
from . import llama


def layer_types(cfg: HFConfig):
    """Older configs: sliding from layer `max_window_layers` on, when `use_sliding_window` is set."""
    n = cfg.require("num_hidden_layers")
    slide = bool(cfg.get("use_sliding_window")) and cfg.get("sliding_window")
    start = cfg.get("max_window_layers", n)
    return ["sliding_attention" if slide and i >= start else "full_attention" for i in range(n)]


def spec(cfg: HFConfig):
    base = llama.spec(cfg, default_layer_types=layer_types(cfg))
    return llama.map_attn(base, lambda i, a: replace(a, bias=True, o_bias=False))
