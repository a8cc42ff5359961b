"""The decoder family as data.

Every modern decoder is one block (norm, attention, norm, FFN, residuals) that differs on a few axes.
A `ModelSpec` names those axes once per layer; `decoder.py` builds modules from it and `Decoder.make_cache`
builds one cache per layer from it. Adapters in `families/` translate a Hugging Face config into a spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Optional, Union

NormKind = Literal["rms", "layer"]
Placement = Literal["pre", "post", "sandwich"]
QKNorm = Literal["head", "proj", "l2"]
Activation = Literal["silu", "gelu", "gelu_tanh", "relu"]


@dataclass(frozen=True)
class NormSpec:
    kind: NormKind = "rms"
    eps: float = 1e-6
    unit_offset: bool = False  # Gemma: x * (1 + w), weights stored around 0
    bias: bool = False  # LayerNorm bias (GPT-2)


@dataclass(frozen=True)
class RopeSpec:
    """Rotary embedding of the first `dims` features of each head.

    `kind` is the Hugging Face `rope_type`; `params` keeps that type's own numbers (factor, low_freq_factor, ...)
    as a sorted tuple of pairs so the spec stays hashable.
    """

    dims: int
    base: float = 10000.0
    kind: str = "default"  # default | linear | dynamic | llama3 | yarn
    params: tuple = ()
    max_position_embeddings: int = 2048
    traditional: bool = False  # rotate interleaved pairs (GPT-J) instead of halves (NeoX)

    def param(self, name, default=None):
        return dict(self.params).get(name, default)


@dataclass(frozen=True)
class AttnSpec:
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope: Optional[RopeSpec] = None  # None: NoPE (or learned absolute positions at the embedding)
    window: Optional[int] = None  # sliding window W: key j visible from query i when i - W < j <= i
    chunk: Optional[int] = None  # chunked attention C: keys of the same chunk only (Llama 4)
    scale: Optional[float] = None  # softmax scale; None -> head_dim ** -0.5
    softcap: Optional[float] = None  # tanh soft cap on scores (Gemma 2)
    qk_norm: Optional[QKNorm] = None  # head: RMSNorm per head; proj: over the whole projection; l2: no weight
    qk_norm_eps: float = 1e-6
    qk_norm_after_rope: bool = False  # Llama 4 normalises the rotated q/k
    # Llama 4 NoPE layers: q *= 1 + attn_scale * log1p(floor((pos + 1) / floor_scale)); (floor_scale, attn_scale)
    temperature_tuning: Optional[tuple] = None
    bias: bool = False  # q/k/v projection bias
    o_bias: bool = False


@dataclass(frozen=True)
class FFNSpec:
    hidden: int
    gated: bool = True  # act(gate) * up -> down (SwiGLU/GeGLU); else up -> act -> down (GPT-2)
    act: Activation = "silu"
    bias: bool = False


@dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention (DeepSeek-V2/V3): K/V come from a compressed latent that is all the cache keeps."""

    n_heads: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    rope: RopeSpec
    q_lora_rank: Optional[int] = None  # None: q_proj straight from the hidden state (V2-Lite)
    scale: Optional[float] = None  # None -> (qk_nope + qk_rope) ** -0.5
    bias: bool = False  # q_a / kv_a / o projection bias
    latent_eps: float = 1e-6  # q_a_layernorm / kv_a_layernorm


@dataclass(frozen=True)
class MoESpec:
    """Routed experts (+ optional shared experts). Router semantics follow the families' reference code."""

    n_experts: int
    top_k: int
    hidden: int  # per-expert intermediate size
    act: Activation = "silu"
    score: Literal["softmax", "sigmoid"] = "softmax"
    norm_topk: bool = False  # renormalise the selected weights to sum to 1
    n_group: Optional[int] = None  # group-limited routing: keep the best `topk_group` of `n_group` groups
    topk_group: Optional[int] = None
    group_score: Literal["max", "top2"] = "max"  # DeepSeek-V2 group_limited_greedy | V3 noaux_tc
    correction_bias: bool = False  # V3: e_score_correction_bias steers selection, not the weights
    scaling: float = 1.0  # routed_scaling_factor
    weight_input: bool = False  # Llama 4: scale the expert's input by its score instead of its output
    shared_hidden: Optional[int] = None  # intermediate size of the always-on shared expert(s)
    shared_gate: bool = False  # Qwen2-MoE: sigmoid gate on the shared expert
    shared_name: str = "shared_experts"  # checkpoint name of the shared expert module
    router_name: str = "gate"  # checkpoint name of the router
    experts_name: str = "switch_mlp"  # name of the stacked experts (mlx-lm's; Llama 4 folders say `experts`)
    router_bias: bool = False


@dataclass(frozen=True)
class LayerSpec:
    attn: Union[AttnSpec, MLASpec]
    ffn: Union[FFNSpec, MoESpec]
    norm: NormSpec = field(default_factory=NormSpec)
    placement: Placement = "pre"
    ffn_name: str = "mlp"  # checkpoint name of the FFN module (Mixtral: block_sparse_moe; Llama 4: feed_forward)


@dataclass(frozen=True)
class ModelSpec:
    vocab_size: int
    hidden_size: int
    layers: tuple  # one LayerSpec per layer
    norm: NormSpec = field(default_factory=NormSpec)  # the final norm
    tie_embeddings: bool = False
    embed_scale: Optional[float] = None  # Gemma multiplies embeddings by sqrt(hidden)
    learned_positions: Optional[int] = None  # GPT-2: size of the absolute position table
    final_softcap: Optional[float] = None
    mtp: tuple = ()  # DeepSeek-V3 multi-token prediction modules: one LayerSpec each, stored after the last layer
    model_type: str = ""

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def with_layers(self, layers) -> "ModelSpec":
        return replace(self, layers=tuple(layers))


AnySpec = Union[NormSpec, RopeSpec, AttnSpec, MLASpec, FFNSpec, MoESpec, LayerSpec, ModelSpec]
