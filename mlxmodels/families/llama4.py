"""Llama 4 (text) = Llama, except: RoPE (interleaved) only on layers with `no_rope_layers[i]` = 1, which attend
within chunks of `attention_chunk_size` and L2-normalise q/k after RoPE; NoPE layers attend globally with
attention temperature tuning; MoE layers (`moe_layers` / `interleave_moe_layer_step`) route top-k by sigmoid
score applied to the expert's input, beside a shared expert; experts are stored fused (`gate_up_proj`)."""

from dataclasses import replace

import mlx.core as mx

from ..config import HFConfig
from ..spec import MoESpec
from . import llama
from .experts import n_experts

# transformers' Llama4TextConfig: temperature tuning, QK-norm and chunked attention are on unless config.json says
# otherwise (no_rope_layers, moe_layers, layer_types: derived from the intervals below when absent)
DEFAULTS = dict(vocab_size=202048, hidden_size=5120, intermediate_size=8192, intermediate_size_mlp=16384,
                num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8, head_dim=128, hidden_act="silu",
                max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False, num_experts_per_tok=1,
                num_local_experts=16, interleave_moe_layer_step=1, use_qk_norm=True, no_rope_layer_interval=4,
                attention_chunk_size=8192, attn_temperature_tuning=True, floor_scale=8192, attn_scale=0.1,
                attention_bias=False, rope_theta=500000.0)


def spec(cfg: HFConfig):
    n = cfg.require("num_hidden_layers")
    rope_layers = cfg.get("no_rope_layers") or [int((i + 1) % cfg.require("no_rope_layer_interval") != 0)
                                                 for i in range(n)]
    step = cfg.require("interleave_moe_layer_step")
    moe_layers = set(cfg.get("moe_layers") if cfg.get("moe_layers") is not None else range(step - 1, n, step))
    chunk = cfg.get("attention_chunk_size")
    types = cfg.layer_types(["chunked_attention" if r and chunk else "full_attention" for r in rope_layers])
    act = llama.activation(cfg.require("hidden_act"))
    moe = MoESpec(n_experts=n_experts(cfg), top_k=cfg.require("num_experts_per_tok"),
                  hidden=cfg.require("intermediate_size"), act=act, score="sigmoid", weight_input=True,
                  shared_hidden=cfg["intermediate_size"], shared_name="shared_expert", router_name="router",
                  experts_name="experts")
    base = llama.spec(HFConfig(cfg, intermediate_size=cfg.require("intermediate_size_mlp")))
    tuning = (cfg.require("floor_scale"), cfg.require("attn_scale")) if cfg.get("attn_temperature_tuning") else None

    def layer(i, l):
        a = l.attn
        if rope_layers[i]:
            a = replace(a, rope=replace(a.rope, traditional=True), qk_norm="l2" if cfg.get("use_qk_norm") else None,
                        qk_norm_after_rope=True, chunk=chunk if types[i] == "chunked_attention" else None)
        else:
            a = replace(a, rope=None, temperature_tuning=tuning)
        return replace(l, attn=a, ffn=moe if i in moe_layers else l.ffn, ffn_name="feed_forward")

    return base.with_layers(layer(i, l) for i, l in enumerate(base.layers))


def map_weights(weights: dict, cfg: HFConfig) -> dict:
    out = {}
    for name, w in weights.items():
        if "vision_model" in name or "multi_modal_projector" in name:
            continue
        name = name.replace("language_model.model.", "model.").replace("language_model.lm_head.", "lm_head.")
        if name.endswith("feed_forward.experts.gate_up_proj"):  # (E, hidden, 2 * inter) -> 2 x (E, inter, hidden)
            gate, up = mx.split(w, 2, axis=-1)
            out[name[: -len("gate_up_proj")] + "gate_proj.weight"] = gate.swapaxes(1, 2)
            out[name[: -len("gate_up_proj")] + "up_proj.weight"] = up.swapaxes(1, 2)
        elif name.endswith("feed_forward.experts.down_proj"):  # (E, inter, hidden) -> (E, hidden, inter)
            out[name + ".weight"] = w.swapaxes(1, 2)
        else:
            out[name] = w
    return out
