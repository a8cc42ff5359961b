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


def spec(cfg: HFConfig):
    n = cfg.require("num_hidden_layers")
    rope_layers = cfg.get("no_rope_layers") or [int((i + 1) % cfg.get("no_rope_layer_interval", 4) != 0)
                                                 for i in range(n)]
    step = cfg.get("interleave_moe_layer_step", 1)
    moe_layers = set(cfg.get("moe_layers") if cfg.get("moe_layers") is not None else range(step - 1, n, step))
    types = cfg.layer_types(["chunked_attention" if r else "full_attention" for r in rope_layers])
    act = llama.activation(cfg.get("hidden_act", "silu"))
    moe = MoESpec(n_experts=n_experts(cfg), top_k=cfg.get("num_experts_per_tok", 1),
                  hidden=cfg.require("intermediate_size"), act=act, score="sigmoid", weight_input=True,
                  shared_hidden=cfg["intermediate_size"], shared_name="shared_expert", router_name="router",
                  experts_name="experts")
    base = llama.spec(HFConfig(cfg, intermediate_size=cfg.get("intermediate_size_mlp") or cfg["intermediate_size"]))
    tuning = (cfg.get("floor_scale", 8192), cfg.get("attn_scale", 0.1)) if cfg.get("attn_temperature_tuning") else None

    def layer(i, l):
        a = l.attn
        if rope_layers[i]:
            a = replace(a, rope=replace(a.rope, traditional=True), qk_norm="l2" if cfg.get("use_qk_norm") else None,
                        qk_norm_after_rope=True,
                        chunk=cfg.get("attention_chunk_size") if types[i] == "chunked_attention" else None)
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
