"""Llama 2 / 3.x: the base every dense adapter starts from (pre-norm RMSNorm, GQA, RoPE with scalings, SwiGLU)."""

from dataclasses import replace

from ..config import ConfigError, HFConfig
from ..spec import AttnSpec, FFNSpec, LayerSpec, ModelSpec, NormSpec

# transformers' LlamaConfig, for the keys this adapter reads (head_dim, num_key_value_heads: derived when absent)
DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-6,
                tie_word_embeddings=False, attention_bias=False, mlp_bias=False, rope_theta=10000.0)
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def attn(cfg: HFConfig, layer_type: str = "full_attention", **changes) -> AttnSpec:
    window = cfg.get("sliding_window") if layer_type == "sliding_attention" else None
    return AttnSpec(
        n_heads=cfg.require("num_attention_heads"),
        n_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        head_dim=cfg.head_dim(),
        rope=cfg.rope(layer_type),
        window=window,
        bias=bool(cfg.get("attention_bias")),
        o_bias=bool(cfg.get("attention_bias")),
        qk_norm_eps=cfg.require("rms_norm_eps"),
        **changes,
    )


def ffn(cfg: HFConfig, **changes) -> FFNSpec:
    return FFNSpec(
        hidden=cfg.require("intermediate_size"),
        act=activation(cfg.require("hidden_act")),
        bias=bool(cfg.get("mlp_bias")),
        **changes,
    )


def activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unsupported hidden_act {name!r}; supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def norm(cfg: HFConfig, **changes) -> NormSpec:
    return NormSpec("rms", cfg.require("rms_norm_eps"), **changes)


def spec(cfg: HFConfig, default_layer_types=None, **model_changes) -> ModelSpec:
    layers = tuple(
        LayerSpec(attn(cfg, t), ffn(cfg), norm(cfg)) for t in cfg.layer_types(default_layer_types)
    )
    return ModelSpec(
        vocab_size=cfg.require("vocab_size"),
        hidden_size=cfg.require("hidden_size"),
        layers=layers,
        norm=norm(cfg),
        tie_embeddings=bool(cfg.require("tie_word_embeddings")),
        model_type=cfg.get("model_type", ""),
        **model_changes,
    )


def map_attn(spec: ModelSpec, fn) -> ModelSpec:
    """Rewrite every layer's AttnSpec with fn(index, attn)."""
    return spec.with_layers(replace(l, attn=fn(i, l.attn)) for i, l in enumerate(spec.layers))
