"""DeepSeek-V2 = Llama, except: multi-head latent attention (optional q LoRA; interleaved RoPE on the rope part;
YaRN softmax-scale correction) and, from layer `first_k_dense_replace` on, softmax-routed experts (greedy or
group-limited greedy) scaled by `routed_scaling_factor`, plus always-on shared experts."""

from dataclasses import replace

import mlx.core as mx

from ..config import HFConfig, ModelError
from ..parts.quantized import take_dequantized
from ..parts.rope import yarn_mscale
from ..spec import LayerSpec, MLASpec, MoESpec
from . import llama
from .experts import n_experts, stack_experts

# transformers' DeepseekV2Config (num_experts_per_tok has no default there: config.json must give it);
# rope_interleave and moe_layer_freq are keys of DeepSeek's own code that transformers does not read (always
# interleaved, every layer from first_k_dense_replace sparse), so they default in the code below, not here
DEFAULTS = dict(vocab_size=102400, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-6,
                tie_word_embeddings=False, attention_bias=False, mlp_bias=False, first_k_dense_replace=0,
                kv_lora_rank=512, q_lora_rank=1536, n_routed_experts=64, n_shared_experts=2, qk_nope_head_dim=128,
                qk_rope_head_dim=64, routed_scaling_factor=1.0, topk_method="greedy", norm_topk_prob=False,
                v_head_dim=128, moe_intermediate_size=1407, rope_theta=10000.0)


def mla(cfg: HFConfig) -> MLASpec:
    nope, rope_dims = cfg.require("qk_nope_head_dim"), cfg.require("qk_rope_head_dim")
    rope = replace(cfg.rope(dims=rope_dims), traditional=bool(cfg.get("rope_interleave", True)))
    scale = (nope + rope_dims) ** -0.5
    if rope.kind != "default" and rope.param("mscale_all_dim"):
        scale *= yarn_mscale(rope.param("factor"), rope.param("mscale_all_dim")) ** 2
    return MLASpec(n_heads=cfg.require("num_attention_heads"), kv_lora_rank=cfg.require("kv_lora_rank"),
                   qk_nope_head_dim=nope, qk_rope_head_dim=rope_dims, v_head_dim=cfg.require("v_head_dim"),
                   rope=rope, q_lora_rank=cfg.get("q_lora_rank"), scale=scale,
                   bias=bool(cfg.get("attention_bias")))


def moe(cfg: HFConfig) -> MoESpec:
    method = cfg.require("topk_method")
    shared = cfg.get("n_shared_experts") or 0
    return MoESpec(
        n_experts=n_experts(cfg), top_k=cfg.require("num_experts_per_tok"),
        hidden=cfg.require("moe_intermediate_size"), act=llama.activation(cfg.require("hidden_act")),
        # DeepSeek's V2 code renormalises only when choosing several experts
        norm_topk=bool(cfg.get("norm_topk_prob")) and cfg["num_experts_per_tok"] > 1,
        n_group=cfg.get("n_group") if method != "greedy" else None, topk_group=cfg.get("topk_group"),
        scaling=cfg.require("routed_scaling_factor"),
        shared_hidden=cfg["moe_intermediate_size"] * shared if shared else None)


def is_sparse(cfg: HFConfig, i: int) -> bool:
    return i >= cfg.require("first_k_dense_replace") and i % (cfg.get("moe_layer_freq") or 1) == 0


def spec(cfg: HFConfig, moe_spec=None):
    base = llama.spec(cfg)
    attn, moe_spec, n = mla(cfg), moe_spec or moe(cfg), cfg.require("num_hidden_layers")
    dense = base.layers[0].ffn

    def layer(i):
        return LayerSpec(attn, moe_spec if is_sparse(cfg, i) else dense, base.layers[0].norm)

    mtp = tuple(layer(n + k) for k in range(cfg.get("num_nextn_predict_layers") or 0))
    return replace(base.with_layers(layer(i) for i in range(n)), mtp=mtp)


def split_kv_b(weights: dict, cfg: HFConfig) -> dict:
    """kv_b_proj (H * (nope + v), kv_lora) -> embed_q (H, kv_lora, nope) and unembed_out (H, v, kv_lora).

    A kv_b_proj stored quantized (mlx-lm's and mlx-community's deepseek_v2 folders, and ours) is dequantized with
    the folder's params and its halves stay float: its groups run along kv_lora, so embed_q (grouped along nope)
    could only be quantized again with a second rounding, and float halves are exactly the values mlx-lm's
    deepseek_v2 multiplies by. Memory: 1% more than a 4-bit DeepSeek-V2 or V2-Lite with the halves in 16 bits,
    2% in float32 (the CPU's compute dtype for quantized models)."""
    H, nope, v = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["v_head_dim"]
    out = dict(weights)
    for name in [n for n in weights if n.endswith("self_attn.kv_b_proj.weight")]:
        path = name[: -len(".weight")]
        w = take_dequantized(out, path, cfg) if f"{path}.scales" in weights else out.pop(name)
        if w.ndim != 2 or w.shape[0] != H * (nope + v):
            raise ModelError(f"tensor {name} has shape {tuple(w.shape)} but config.json implies {H * (nope + v)} "
                             "rows (num_attention_heads x (qk_nope_head_dim + v_head_dim)); the config and the "
                             "weights disagree")
        w = w.reshape(H, nope + v, -1)
        prefix = path[: -len("kv_b_proj")]
        out[prefix + "embed_q.weight"] = w[:, :nope, :].swapaxes(-1, -2)
        out[prefix + "unembed_out.weight"] = w[:, nope:, :]
    return out


# mlx-lm's deepseek_v2 reads kv_b_proj whole (its deepseek_v3 reads our halves): convert joins the halves back on
# export and quantizes the joined matrix as the plain Linear mlx-lm builds (quantize/convert.py)
JOINED_ON_EXPORT = {"kv_b_proj": ("embed_q", "unembed_out")}


def export_weights(weights: dict, cfg: HFConfig) -> dict:
    """Float embed_q and unembed_out -> kv_b_proj (H * (nope + v), kv_lora): split_kv_b undone, exactly."""
    out = dict(weights)
    for name in [n for n in weights if n.endswith("self_attn.embed_q.weight")]:
        prefix = name[: -len("embed_q.weight")]
        w = mx.concatenate([out.pop(name).swapaxes(-1, -2), out.pop(prefix + "unembed_out.weight")], axis=1)
        out[prefix + "kv_b_proj.weight"] = w.reshape(-1, w.shape[-1])
    return out


def map_weights(weights: dict, cfg: HFConfig) -> dict:
    n = cfg.require("num_hidden_layers")
    # MTP modules (layers >= n) carry copies of the embedding and head, which are shared with the main model.
    copies = (".embed_tokens.weight", ".shared_head.head.weight")
    weights = {k: v for k, v in weights.items() if not (layer_index(k) >= n and k.endswith(copies))}
    return split_kv_b(stack_experts(weights), cfg)


def layer_index(name: str) -> int:
    return int(name.split(".")[2]) if name.startswith("model.layers.") else -1
