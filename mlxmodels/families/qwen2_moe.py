"""Qwen2-MoE = Qwen3-MoE's routing on Qwen2 attention (q/k/v bias per `qkv_bias`, no QK-norm), plus a shared
expert whose output is scaled by a sigmoid gate; with `use_sliding_window`, every other layer below
`max_window_layers` slides (transformers' rule for this family)."""

from ..config import HFConfig
from . import qwen2, qwen3_moe

map_weights = qwen3_moe.map_weights

# transformers' Qwen2MoeConfig
DEFAULTS = dict(vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                num_attention_heads=16, num_key_value_heads=16, hidden_act="silu", max_position_embeddings=32768,
                rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False, sliding_window=4096,
                max_window_layers=28, decoder_sparse_step=1, moe_intermediate_size=1408,
                shared_expert_intermediate_size=5632, num_experts_per_tok=4, num_experts=60, norm_topk_prob=False,
                qkv_bias=True, rope_theta=10000.0)


def spec(cfg: HFConfig):
    types = qwen2.layer_types(cfg, slides=lambda i: (i + 1) % 2 and i < cfg.require("max_window_layers"))
    shared = qwen3_moe.moe(cfg, shared_hidden=cfg.require("shared_expert_intermediate_size"), shared_gate=True,
                           shared_name="shared_expert")
    return qwen3_moe.spec(cfg, base=qwen2.spec(cfg, types, bool(cfg.require("qkv_bias"))), moe_spec=shared)
