"""Gemma 3 = Llama, except: sandwich norms with (1 + w) RMSNorm, GeGLU, embeddings scaled by sqrt(hidden),
per-head QK-norm, softmax scale from `query_pre_attn_scalar`, 5 local : 1 global layers (or any `layer_types`)
with their own RoPE base, optional final logit softcap, tied head. (`attn_logit_softcapping` is in Gemma 3's config
but transformers never applies it; Gemma 2 does.)"""

from dataclasses import replace

from ..config import HFConfig
from ..spec import RopeSpec
from . import llama


def rope(cfg: HFConfig, layer_type: str) -> RopeSpec:
    if cfg.get("rope_parameters"):
        return cfg.rope(layer_type)
    # Older dialect: local layers use `rope_local_base_freq` unscaled; `rope_scaling` is for global layers only.
    if layer_type == "sliding_attention":
        return RopeSpec(cfg.head_dim(), cfg.get("rope_local_base_freq", 10000.0),
                        max_position_embeddings=cfg.get("max_position_embeddings", 2048))
    return cfg.rope(layer_type, legacy_base=cfg.get("rope_theta", 1_000_000.0))


def spec(cfg: HFConfig):
    n, every = cfg.require("num_hidden_layers"), cfg.get("sliding_window_pattern", 6)
    types = cfg.layer_types(["sliding_attention" if (i + 1) % every else "full_attention" for i in range(n)])
    cfg = HFConfig(cfg, hidden_act=cfg.get("hidden_activation") or cfg.get("hidden_act", "gelu_pytorch_tanh"),
                   layer_types=types)
    base = llama.spec(
        cfg, tie=True, embed_scale=cfg.require("hidden_size") ** 0.5,
        final_softcap=cfg.get("final_logit_softcapping"),
    )
    base = replace(base, norm=replace(base.norm, unit_offset=True))
    return base.with_layers(
        replace(
            l,
            attn=replace(l.attn, qk_norm="head", rope=rope(cfg, types[i]),
                         scale=cfg.get("query_pre_attn_scalar", cfg.head_dim()) ** -0.5),
            norm=replace(l.norm, unit_offset=True),
            placement="sandwich",
        )
        for i, l in enumerate(base.layers)
    )
