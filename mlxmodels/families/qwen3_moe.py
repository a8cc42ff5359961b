"""Qwen3-MoE = Qwen3, except the FFN is top-k softmax-routed experts (optionally renormalised) on layers
`decoder_sparse_step` apart, dense on `mlp_only_layers`; with `use_sliding_window` every layer slides, and the
head dim is hidden / heads when config.json names none."""

from dataclasses import replace

from ..config import HFConfig
from ..spec import MoESpec
from . import llama, qwen2, qwen3
from .experts import n_experts, stack_experts

# transformers' Qwen3MoeConfig
DEFAULTS = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
                num_attention_heads=32, num_key_value_heads=4, hidden_act="silu", max_position_embeddings=32768,
                rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False, use_sliding_window=False,
                sliding_window=4096, decoder_sparse_step=1, moe_intermediate_size=768, num_experts_per_tok=8,
                num_experts=128, norm_topk_prob=False, rope_theta=10000.0)


def sparse_layers(cfg: HFConfig) -> list:
    step, dense = cfg.require("decoder_sparse_step"), set(cfg.get("mlp_only_layers") or [])
    n = cfg.require("num_hidden_layers")
    return [i not in dense and n_experts(cfg) > 0 and (i + 1) % step == 0 for i in range(n)]


def moe(cfg: HFConfig, **changes) -> MoESpec:
    return MoESpec(n_experts=n_experts(cfg), top_k=cfg.require("num_experts_per_tok"),
                   hidden=cfg.require("moe_intermediate_size"), act=llama.activation(cfg.require("hidden_act")),
                   norm_topk=bool(cfg.get("norm_topk_prob")), **changes)


def spec(cfg: HFConfig, base=None, moe_spec=None):
    base = base or qwen3.spec(cfg, qwen2.layer_types(cfg, slides=lambda i: True))
    moe_spec = moe_spec or moe(cfg)
    sparse = sparse_layers(cfg)
    return base.with_layers(replace(l, ffn=moe_spec) if sparse[i] else l for i, l in enumerate(base.layers))


def map_weights(weights: dict, cfg: HFConfig) -> dict:
    return stack_experts(weights)
