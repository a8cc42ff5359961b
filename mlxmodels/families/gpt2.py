"""GPT-2 = Llama-shaped, except: LayerNorm with bias, learned absolute positions (no RoPE), plain GELU MLP and
attention with biases, a tied head, and checkpoints with fused Conv1D q/k/v stored transposed."""

import re

import mlx.core as mx

from ..config import HFConfig
from ..spec import AttnSpec, FFNSpec, LayerSpec, ModelSpec, NormSpec

# transformers' GPT2Config (n_inner: 4 x n_embd when absent)
DEFAULTS = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, layer_norm_epsilon=1e-5)

RENAMES = [
    (r"^(transformer\.|model\.)?wte\.", "model.embed_tokens."),
    (r"^(transformer\.|model\.)?wpe\.", "model.embed_positions."),
    (r"^(transformer\.|model\.)?ln_f\.", "model.norm."),
    (r"^(transformer\.|model\.)?h\.(\d+)\.ln_1\.", r"model.layers.\2.input_layernorm."),
    (r"^(transformer\.|model\.)?h\.(\d+)\.ln_2\.", r"model.layers.\2.post_attention_layernorm."),
    (r"^(transformer\.|model\.)?h\.(\d+)\.attn\.c_attn\.", r"model.layers.\2.self_attn.c_attn."),
    (r"^(transformer\.|model\.)?h\.(\d+)\.attn\.c_proj\.", r"model.layers.\2.self_attn.o_proj."),
    (r"^(transformer\.|model\.)?h\.(\d+)\.mlp\.c_fc\.", r"model.layers.\2.mlp.up_proj."),
    (r"^(transformer\.|model\.)?h\.(\d+)\.mlp\.c_proj\.", r"model.layers.\2.mlp.down_proj."),
]


def spec(cfg: HFConfig) -> ModelSpec:
    hidden, heads = cfg.require("n_embd"), cfg.require("n_head")
    eps = cfg.require("layer_norm_epsilon")
    norm = NormSpec("layer", eps, bias=True)
    attn = AttnSpec(heads, heads, hidden // heads, bias=True, o_bias=True)
    ffn = FFNSpec(cfg.get("n_inner") or 4 * hidden, gated=False, act="gelu_tanh", bias=True)
    return ModelSpec(
        vocab_size=cfg.require("vocab_size"),
        hidden_size=hidden,
        layers=tuple(LayerSpec(attn, ffn, norm) for _ in range(cfg.require("n_layer"))),
        norm=norm,
        tie_embeddings=True,
        learned_positions=cfg.require("n_positions"),
        model_type="gpt2",
    )


def map_weights(weights: dict, cfg: HFConfig) -> dict:
    out = {}
    for name, w in weights.items():
        # transformers' Conv1D stores (in, out); mlx-lm folders ("model.h.*") already hold (out, in).
        conv1d = not name.startswith("model.")
        if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
            continue  # causal-mask buffers of old checkpoints; the head is tied
        for pattern, repl in RENAMES:
            name = re.sub(pattern, repl, name)
        if conv1d and name.endswith("weight") and (".self_attn." in name or ".mlp." in name):
            w = w.T
        if ".self_attn.c_attn." in name:
            for part, proj in zip(mx.split(w, 3, axis=0), ("q_proj", "k_proj", "v_proj")):
                out[name.replace("c_attn", proj)] = part
        else:
            out[name] = w
    return out


# Our q/k/v projections are one fused `c_attn` in mlx-lm's layout, so they must share quantization params.
FUSED_ON_EXPORT = (("q_proj", "k_proj", "v_proj"),)
EXPORT = [
    (r"^model\.embed_tokens\.", "model.wte."),
    (r"^model\.embed_positions\.", "model.wpe."),
    (r"^model\.norm\.", "model.ln_f."),
    (r"^model\.layers\.(\d+)\.input_layernorm\.", r"model.h.\1.ln_1."),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.", r"model.h.\1.ln_2."),
    (r"^model\.layers\.(\d+)\.self_attn\.o_proj\.", r"model.h.\1.attn.c_proj."),
    (r"^model\.layers\.(\d+)\.mlp\.up_proj\.", r"model.h.\1.mlp.c_fc."),
    (r"^model\.layers\.(\d+)\.mlp\.down_proj\.", r"model.h.\1.mlp.c_proj."),
]


def export_weights(weights: dict, cfg: HFConfig) -> dict:
    """Our tensors -> mlx-lm's GPT-2 names (`model.h.N.attn.c_attn`, fused q/k/v as (out, in), `model.wte`, ...),
    which `map_weights` reads back. Quantized q/k/v rows are independent, so their triplets fuse by rows too."""
    out, fused = {}, {}
    for name, w in weights.items():
        m = re.match(r"^model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(\w+)$", name)
        if m:
            fused.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = w
            continue
        for pattern, repl in EXPORT:
            name = re.sub(pattern, repl, name)
        out[name] = w
    for (layer, leaf), parts in fused.items():
        out[f"model.h.{layer}.attn.c_attn.{leaf}"] = mx.concatenate([parts[p] for p in "qkv"], axis=0)
    return out
