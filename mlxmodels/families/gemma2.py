"""Gemma 2 = Gemma 3, except: no QK-norm, attention logits soft-capped, one RoPE for every layer, 1 local : 1 global."""

from dataclasses import replace

from ..config import HFConfig
from . import gemma3, llama


def spec(cfg: HFConfig):
    cfg = HFConfig(cfg, sliding_window_pattern=cfg.get("sliding_window_pattern", 2))
    rope, cap = cfg.rope(), cfg.get("attn_logit_softcapping")
    return llama.map_attn(gemma3.spec(cfg), lambda i, a: replace(a, qk_norm=None, rope=rope, softcap=cap))
