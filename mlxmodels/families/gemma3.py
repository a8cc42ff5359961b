"""Gemma 3 = Llama, except: sandwich norms with (1 + w) RMSNorm, GeGLU, embeddings scaled by sqrt(hidden),
per-head QK-norm, softmax scale from `query_pre_attn_scalar`, 5 local : 1 global layers (or any `layer_types`)
with their own RoPE base, optional final logit softcap, tied head. (`attn_logit_softcapping` is in Gemma 3's config
but transformers never applies it; Gemma 2 does.) Published configs omit most sizes: the defaults below fill them."""

from dataclasses import replace

from ..config import HFConfig
from ..spec import RopeSpec
from . import llama

# transformers' Gemma3TextConfig; rope_theta / rope_local_base_freq / sliding_window_pattern are the older
# dialect's names for its global and local RoPE bases and its local : global period
DEFAULTS = dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                num_attention_heads=8, num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
                max_position_embeddings=131072, rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False,
                query_pre_attn_scalar=256, sliding_window=4096, rope_theta=1e6, rope_local_base_freq=10000.0,
                sliding_window_pattern=6)


def rope(cfg: HFConfig, layer_type: str) -> RopeSpec:
    if layer_type != "sliding_attention":
        return cfg.rope(layer_type)
    local = cfg.require("rope_local_base_freq")
    if cfg.get("rope_parameters"):
        return cfg.rope(layer_type, theta=local)
    # Older dialect: `rope_scaling` is for global layers only; local layers rotate unscaled.
    return RopeSpec(cfg.head_dim(), local, max_position_embeddings=cfg.require("max_position_embeddings"))


def spec(cfg: HFConfig, every=None, layer_rope=None):
    """`every`: the local : global period when there are no layer_types (Gemma 2 passes its own);
    `layer_rope(layer_type)`: each layer's RoPE (default: Gemma 3's local and global bases)."""
    n, every = cfg.require("num_hidden_layers"), every or cfg.require("sliding_window_pattern")
    types = cfg.layer_types(["sliding_attention" if (i + 1) % every else "full_attention" for i in range(n)])
    layer_rope = layer_rope or (lambda t: rope(cfg, t))
    cfg = HFConfig(cfg, hidden_act=cfg.require("hidden_activation"), layer_types=types)
    base = llama.spec(cfg, embed_scale=cfg.require("hidden_size") ** 0.5,
                      final_softcap=cfg.get("final_logit_softcapping"))
    base = replace(base, norm=replace(base.norm, unit_offset=True))
    return base.with_layers(
        replace(
            l,
            attn=replace(l.attn, qk_norm="head", rope=layer_rope(types[i]),
                         scale=cfg.require("query_pre_attn_scalar") ** -0.5),
            norm=replace(l.norm, unit_offset=True),
            placement="sandwich",
        )
        for i, l in enumerate(base.layers)
    )
