"""A DeepSeek-V3 multi-token prediction (MTP) module: a decoder block fed with the previous depth's hidden state
and the embedding of the next known token.

Module k at position i: h' = Block(eh_proj([enorm(embed(t_{i+k})); hnorm(h_i)])), logits = head(norm(h')),
with the concatenation order of DeepSeek's inference code (embedding first). h_0 is the main model's final
(normed) hidden state; embedding and head are the main model's. Stored as `model.layers.{num_hidden_layers + k}`.
"""

import mlx.core as mx
import mlx.nn as nn

from ..spec import LayerSpec
from .block import DecoderBlock
from .compiled import compiled, use_compiled
from .norms import make_norm


class SharedHead(nn.Module):
    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm


class MTPBlock(DecoderBlock):
    def __init__(self, hidden: int, spec: LayerSpec, self_attn: nn.Module, ffn: nn.Module):
        super().__init__(hidden, spec, self_attn, ffn)
        self.enorm = make_norm(spec.norm, hidden)
        self.hnorm = make_norm(spec.norm, hidden)
        self.eh_proj = nn.Linear(2 * hidden, hidden, bias=False)
        self.shared_head = SharedHead(make_norm(spec.norm, hidden))

    def predict(self, embeddings, h, cache):
        """embeddings (B, T, D) of t_{i+k}, h (B, T, D) of depth k-1 -> h' (B, T, D), before the head's norm."""
        mix = compiled(self, "_mix") if use_compiled(h.shape[1]) else self._mix
        return DecoderBlock.__call__(self, mix(embeddings, h), cache)

    def _mix(self, embeddings, h):
        return self.eh_proj(mx.concatenate([self.enorm(embeddings), self.hnorm(h)], axis=-1))
