"""Qwen3 = Qwen2, except no q/k/v bias (unless `attention_bias`) and per-head RMS QK-norm before RoPE."""

from dataclasses import replace

from ..config import HFConfig
from . import llama, qwen2


def spec(cfg: HFConfig):
    base = llama.spec(cfg, default_layer_types=qwen2.layer_types(cfg))
    return llama.map_attn(base, lambda i, a: replace(a, qk_norm="head"))
