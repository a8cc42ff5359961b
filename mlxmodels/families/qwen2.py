"""Qwen2 = Llama, except q/k/v projections carry a bias (o_proj does not), and a sliding window only where
`use_sliding_window` is set: then from layer `max_window_layers` on (or per `layer_types`)."""

from dataclasses import replace

from ..config import HFConfig
from . import llama

# transformers' Qwen2Config (head_dim: hidden / heads)
DEFAULTS = dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, hidden_act="silu", max_position_embeddings=32768,
                rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False, sliding_window=4096,
                max_window_layers=28, rope_theta=10000.0)


def layer_types(cfg: HFConfig, slides=None) -> list:
    """For configs without layer_types: with `use_sliding_window`, the layers `slides(i)` picks slide (by default
    transformers' Qwen2/Qwen3 rule, from `max_window_layers` on); without it, none."""
    n = cfg.require("num_hidden_layers")
    if not (cfg.get("use_sliding_window") and cfg.get("sliding_window")):
        return ["full_attention"] * n
    slides = slides or (lambda i: i >= cfg.require("max_window_layers"))
    return ["sliding_attention" if slides(i) else "full_attention" for i in range(n)]


def windowed(cfg: HFConfig, a):
    """transformers drops the window whenever `use_sliding_window` is off, whatever layer_types says."""
    return a if cfg.get("use_sliding_window") else replace(a, window=None)


def spec(cfg: HFConfig, types=None, qkv_bias=True):
    base = llama.spec(cfg, default_layer_types=types or layer_types(cfg))
    return llama.map_attn(base, lambda i, a: replace(windowed(cfg, a), bias=qkv_bias, o_bias=False))
