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
    bias: bool = False  # q/k/v projection bias
    o_bias: bool = False


@dataclass(frozen=True)
class FFNSpec:
    hidden: int
    gated: bool = True  # act(gate) * up -> down (SwiGLU/GeGLU); else up -> act -> down (GPT-2)
    act: Activation = "silu"
    bias: bool = False


@dataclass(frozen=True)
class LayerSpec:
    attn: AttnSpec
    ffn: FFNSpec
    norm: NormSpec = field(default_factory=NormSpec)
    placement: Placement = "pre"


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
    model_type: str = ""

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def with_layers(self, layers) -> "ModelSpec":
        return replace(self, layers=tuple(layers))


AnySpec = Union[NormSpec, RopeSpec, AttnSpec, FFNSpec, LayerSpec, ModelSpec]
