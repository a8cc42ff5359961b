"""Qwen3 = Qwen2, except no q/k/v bias (unless `attention_bias`), per-head RMS QK-norm before RoPE, and a head
dim of 128 when config.json names none."""

from dataclasses import replace

from ..config import HFConfig
from . import llama, qwen2

# transformers' Qwen3Config
DEFAULTS = dict(qwen2.DEFAULTS, head_dim=128, attention_bias=False)


def spec(cfg: HFConfig, types=None):
    base = llama.spec(cfg, default_layer_types=types or qwen2.layer_types(cfg))
    return llama.map_attn(base, lambda i, a: replace(qwen2.windowed(cfg, a), qk_norm="head"))
