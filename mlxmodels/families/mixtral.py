"""Mixtral = Mistral, except the FFN (`block_sparse_moe`) is top-k of E experts with softmax weights renormalised
over the chosen ones; experts are stored one tensor each as w1 (gate), w3 (up), w2 (down)."""

from dataclasses import replace

from ..config import HFConfig
from ..spec import MoESpec
from . import llama, mistral
from .experts import n_experts, stack_experts


def spec(cfg: HFConfig):
    base = mistral.spec(cfg)
    moe = MoESpec(n_experts=n_experts(cfg), top_k=cfg.require("num_experts_per_tok"),
                  hidden=cfg.require("intermediate_size"), act=llama.activation(cfg.get("hidden_act", "silu")),
                  norm_topk=True)
    return base.with_layers(replace(l, ffn=moe, ffn_name="block_sparse_moe") for l in base.layers)


def map_weights(weights: dict, cfg: HFConfig) -> dict:
    return stack_experts(weights, {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"})
