"""Mixtral = Mistral, except the FFN (`block_sparse_moe`) is top-k of E experts with softmax weights renormalised
over the chosen ones; experts are stored one tensor each as w1 (gate), w3 (up), w2 (down). Unlike Mistral, no
sliding window unless config.json names one."""

from dataclasses import replace

from ..config import HFConfig
from ..spec import MoESpec
from . import llama, mistral
from .experts import n_experts, stack_experts

# transformers' MixtralConfig (head_dim: hidden / heads; sliding_window: none)
DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, hidden_act="silu", max_position_embeddings=131072,
                rms_norm_eps=1e-5, tie_word_embeddings=False, num_local_experts=8, num_experts_per_tok=2,
                rope_theta=1e6)


def spec(cfg: HFConfig):
    base = mistral.spec(cfg)
    moe = MoESpec(n_experts=n_experts(cfg), top_k=cfg.require("num_experts_per_tok"),
                  hidden=cfg.require("intermediate_size"), act=llama.activation(cfg.require("hidden_act")),
                  norm_topk=True)
    return base.with_layers(replace(l, ffn=moe, ffn_name="block_sparse_moe") for l in base.layers)


def map_weights(weights: dict, cfg: HFConfig) -> dict:
    return stack_experts(weights, {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"})
