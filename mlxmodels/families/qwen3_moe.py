"""Qwen3-MoE = Qwen3, except the FFN is top-k softmax-routed experts (optionally renormalised) on layers
`decoder_sparse_step` apart, dense on `mlp_only_layers`."""

from dataclasses import replace

from ..config import HFConfig
from ..spec import MoESpec
from . import llama, qwen3
from .experts import n_experts, stack_experts


def sparse_layers(cfg: HFConfig) -> list:
    step, dense = cfg.get("decoder_sparse_step", 1) or 1, set(cfg.get("mlp_only_layers") or [])
    n = cfg.require("num_hidden_layers")
    return [i not in dense and n_experts(cfg) > 0 and (i + 1) % step == 0 for i in range(n)]


def moe(cfg: HFConfig, **changes) -> MoESpec:
    return MoESpec(n_experts=n_experts(cfg), top_k=cfg.require("num_experts_per_tok"),
                   hidden=cfg.require("moe_intermediate_size"), act=llama.activation(cfg.get("hidden_act", "silu")),
                   norm_topk=bool(cfg.get("norm_topk_prob", False)), **changes)


def spec(cfg: HFConfig, base=None, moe_spec=None):
    base = base or qwen3.spec(cfg)
    moe_spec = moe_spec or moe(cfg)
    sparse = sparse_layers(cfg)
    return base.with_layers(replace(l, ffn=moe_spec) if sparse[i] else l for i, l in enumerate(base.layers))


def map_weights(weights: dict, cfg: HFConfig) -> dict:
    return stack_experts(weights)
