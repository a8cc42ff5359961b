"""Tensor mode: every layer on every rank, each holding 1/N of its heads, FFN columns and vocabulary rows.

Per sublayer one all_sum: attention splits query heads (q rows, o_proj columns), KV heads split with them, or, when
there are fewer KV heads than ranks, each rank keeps the one KV head its query heads read. A dense FFN splits its
intermediate (gate/up rows, down_proj columns); MoE layers split every routed and shared expert's intermediate the
same way over the stacked (E, out, in) tensors, the router whole, so every rank routes alike. The embedding and
head split over the vocabulary (an all_sum of embeddings that are zero outside a rank's rows; an all_gather of
logits). Norms, MTP's eh_proj and positions stay whole.

MLA splits its heads (q_b_proj / q_proj rows, embed_q and unembed_out per head, o_proj columns) and keeps the
latent cache whole on every rank: a row is kv_lora_rank + rope values for all heads (576 for DeepSeek-V3, the size
of 4.5 heads of a dense model's K alone), each head's K/V come from the whole row through its own embed_q /
unembed_out, and splitting the row's features instead would add an all_sum inside attention for every step's scores
while saving a few percent of a rank's memory. So q_a_proj and kv_a_proj_with_mqa (small) run on every rank too.

Experts mode (experts.py) composes this layout: it overrides the three expert hooks (`local_moe`, `expert_cut`,
`moe_module`) and keeps every other placement and module.
"""

import re
from dataclasses import replace
from functools import partial

import mlx.core as mx
import mlx.nn as nn

from ..decoder import Decoder
from ..parts.attention import Attention
from ..parts.block import DecoderBlock
from ..parts.ffn import MLP
from ..parts.mla import MLA
from ..parts.mtp import MTPBlock
from ..spec import AttnSpec, FFNSpec, LayerSpec, MLASpec, MoESpec
from .layout import Layout, ParallelError, Slice
from .sharded import SummedMoE, VocabEmbedding, VocabLinear, VocabSplit, summed

LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)\.([^.]+)$")  # -> layer, module path, leaf (weight, scales, ...)
ROWS, COLUMNS, HEADS = "rows", "columns", "heads"  # output features, input features, MLA's per-head stacks
ATTENTION = {"q_proj": ROWS, "q_b_proj": ROWS, "embed_q": HEADS, "unembed_out": HEADS, "o_proj": COLUMNS}
FFN = {"gate_proj": ROWS, "up_proj": ROWS, "down_proj": COLUMNS}


class TensorLayout(Layout):
    name = "tensor"

    def __init__(self, spec, group, budgets=None):
        super().__init__(spec, group, budgets)
        self.all_sum = partial(mx.distributed.all_sum, group=group)
        self.vocab = VocabSplit(spec.vocab_size, self.rank, self.size, group)
        n = spec.num_layers
        self.local_spec = replace(spec, layers=tuple(self.local_layer(l, i) for i, l in enumerate(spec.layers)),
                                  mtp=tuple(self.local_layer(l, n + i) for i, l in enumerate(spec.mtp)))

    # ---- the rank's spec

    def local_layer(self, layer: LayerSpec, index: int) -> LayerSpec:
        a = layer.attn
        if isinstance(a, MLASpec):
            attn = replace(a, n_heads=self._part(a.n_heads, f"layer {index}: {a.n_heads} attention heads"))
        else:
            attn = replace(a, n_heads=self._part(a.n_heads, f"layer {index}: {a.n_heads} attention heads"),
                           n_kv_heads=self._kv_heads(a, index))
            if a.qk_norm == "proj":
                raise ParallelError(f"layer {index}: its q/k norm spans the whole projection (OLMo2 style), which a "
                                    "split by heads would change; use --parallel pipeline")
        if isinstance(layer.ffn, MoESpec):
            ffn = self.local_moe(layer.ffn, index)
        else:
            ffn = replace(layer.ffn, hidden=self._part(layer.ffn.hidden, f"layer {index}: FFN intermediate "
                                                                          f"{layer.ffn.hidden}"))
        return replace(layer, attn=attn, ffn=ffn)

    def local_moe(self, moe: MoESpec, index: int) -> MoESpec:
        """Every expert's intermediate split (routed and shared); the router stays whole."""
        shared = moe.shared_hidden and self._part(moe.shared_hidden, f"layer {index}: shared expert intermediate "
                                                                       f"{moe.shared_hidden}")
        return replace(moe, hidden=self._part(moe.hidden, f"layer {index}: expert intermediate {moe.hidden}"),
                       shared_hidden=shared)

    def _kv_heads(self, a: AttnSpec, index: int) -> int:
        if a.n_kv_heads % self.size == 0:
            return a.n_kv_heads // self.size
        if self.size % a.n_kv_heads == 0:
            return 1  # each rank's query heads read one KV head: that one is kept (replicated across ranks)
        raise ParallelError(f"layer {index}: {a.n_kv_heads} KV heads neither divide into nor divide {self.size} "
                            "ranks; use --parallel pipeline or another number of ranks")

    def _part(self, n: int, what: str) -> int:
        if n % self.size:
            raise ParallelError(f"{what} do not divide into {self.size} ranks; use --parallel pipeline or another "
                                "number of ranks")
        return n // self.size

    # ---- where each tensor goes: every rank holds every tensor, cut or whole

    def place(self, name: str, shape: tuple):
        return name, self.cut(name, shape)

    def cut(self, name: str, shape: tuple):
        """-> this rank's Slice of the tensor, or None when it is held whole."""
        if name.startswith(("model.embed_tokens.", "lm_head.")):
            return self.vocab.cut()
        m = LAYER.match(name)
        if m is None:
            return None  # final norm, learned positions
        index, path, leaf = int(m.group(1)), m.group(2).split("."), m.group(3)
        spec = self.spec
        layer = spec.layers[index] if index < spec.num_layers else spec.mtp[index - spec.num_layers]
        if path[0] == "self_attn" and len(path) == 2:
            return self._attention_cut(layer.attn, path[1], leaf)
        if path[0] == layer.ffn_name and isinstance(layer.ffn, FFNSpec) and len(path) == 2:
            return self._split(FFN.get(path[1]), leaf)
        if path[0] == layer.ffn_name and isinstance(layer.ffn, MoESpec) and len(path) == 3:
            moe = layer.ffn
            if path[1] == moe.experts_name:
                return self.expert_cut(moe, path[2], leaf)
            if path[1] == moe.shared_name:
                return self._split(FFN.get(path[2]), leaf)
        return None  # norms, router, shared expert gate, MLA's latent projections, MTP's eh_proj

    def expert_cut(self, moe: MoESpec, proj: str, leaf: str):
        """Stacked experts (E, out, in): every expert's intermediate split, as a dense FFN's."""
        return self._split(FFN.get(proj), leaf)

    def _attention_cut(self, attn, module: str, leaf: str):
        if module in ("k_proj", "v_proj"):
            kv = attn.n_kv_heads
            if kv % self.size == 0:
                return Slice.part(0, self.rank, self.size)
            return Slice.part(0, self.rank * kv // self.size, kv)  # the KV head this rank's query heads read
        return self._split(ATTENTION.get(module), leaf)

    def _split(self, how, leaf: str):
        if how == HEADS:
            return Slice.part(0, self.rank, self.size)
        if how == ROWS:  # (..., out, in) weights, stacked experts too; (out,) biases
            return Slice.part(-1 if leaf == "bias" else -2, self.rank, self.size)
        if how == COLUMNS and leaf != "bias":  # a bias of split columns is added once, after the sum
            return Slice.part(-1, self.rank, self.size)
        return None

    # ---- the rank's modules

    def build(self) -> nn.Module:
        spec = self.local_spec
        model = Decoder(spec, build=self.block)
        body, D = model.model, spec.hidden_size
        for k, layer in enumerate(spec.mtp):  # Decoder builds MTP blocks whole: put this rank's in their place
            body.layers[spec.num_layers + k] = self.block(D, layer, MTPBlock)
        body.embed_tokens = VocabEmbedding(self.vocab, D, self.all_sum)
        if not spec.tie_embeddings:
            model.lm_head = VocabLinear(D, self.vocab)
        return model

    def block(self, hidden: int, layer: LayerSpec, block=DecoderBlock) -> nn.Module:
        """One layer of this rank's heads and columns (layer: the local LayerSpec)."""
        if isinstance(layer.attn, MLASpec):
            attn = MLA(hidden, layer.attn)
        else:
            attn = Attention(hidden, layer.attn, layer.norm)
        attn.o_proj = summed(attn.o_proj, self.all_sum)
        if isinstance(layer.ffn, MoESpec):
            ffn = self.moe_module(hidden, layer.ffn)
        else:
            ffn = MLP(hidden, layer.ffn)
            ffn.down_proj = summed(ffn.down_proj, self.all_sum)
        return block(hidden, layer, attn, ffn)

    def moe_module(self, hidden: int, moe: MoESpec) -> nn.Module:
        """An MoE layer for the local MoESpec, its output summed across ranks."""
        return SummedMoE(hidden, moe, self.all_sum)
