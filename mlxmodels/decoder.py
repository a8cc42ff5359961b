"""Decoder: embed (scale) -> blocks -> final norm -> head (tied | own, softcap).

Modules carry the Hugging Face names (`model.layers.3.self_attn.q_proj`), so loading a checkpoint is the
identity plus the exceptions an adapter lists.
"""

from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn

from .errors import ContextError
from .parts.attention import Attention
from .parts.block import DecoderBlock
from .parts.cache import make_layer_cache
from .parts.ffn import MLP
from .parts.mla import MLA
from .parts.moe import MoE
from .parts.mtp import MTPBlock
from .parts.norms import make_norm
from .spec import LayerSpec, MLASpec, ModelSpec, MoESpec


def build_block(hidden: int, spec: LayerSpec, block=DecoderBlock) -> DecoderBlock:
    attn = MLA(hidden, spec.attn) if isinstance(spec.attn, MLASpec) else Attention(hidden, spec.attn, spec.norm)
    ffn = MoE(hidden, spec.ffn) if isinstance(spec.ffn, MoESpec) else MLP(hidden, spec.ffn)
    return block(hidden, spec, attn, ffn)


class Body(nn.Module):
    """The part under `model.`: embeddings, blocks and the final norm; returns hidden states."""

    def __init__(self, spec: ModelSpec, build: Callable[[int, LayerSpec], nn.Module]):
        super().__init__()
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        if spec.learned_positions:
            self.embed_positions = nn.Embedding(spec.learned_positions, spec.hidden_size)
        # MTP modules follow the main layers, as in the checkpoints; only the main layers run in __call__
        self.layers = [build(spec.hidden_size, layer) for layer in spec.layers] + [
            build_block(spec.hidden_size, layer, MTPBlock) for layer in spec.mtp
        ]
        self._n_main = len(spec.layers)
        self.norm = make_norm(spec.norm, spec.hidden_size)
        self._embed_scale = spec.embed_scale

    def embed(self, input_ids, offset: int = 0):
        # (B, T, hidden) in the compute dtype: a quantized (mxfp) embedding returns bfloat16 whatever the model's
        h = self.embed_tokens(input_ids).astype(self.norm.weight.dtype)
        if self._embed_scale is not None:
            # Multiply in the activation dtype: transformers rounds the scale to it too.
            h = h * mx.array(self._embed_scale, dtype=mx.float32).astype(h.dtype)
        if "embed_positions" in self:
            # offset: an int, or one position per sequence (B,) from a batched paged cache. A position past the
            # table would be an out-of-bounds gather (MLX does not check): refused, or clamped where checking would
            # mean waiting on the device (the batch generator stops sequences at the context).
            n = self.embed_positions.weight.shape[0]
            if isinstance(offset, mx.array):
                positions = mx.minimum(offset[:, None] + mx.arange(input_ids.shape[1]), n - 1)
            elif offset + input_ids.shape[1] > n:
                raise ContextError(f"position {offset + input_ids.shape[1] - 1} is past the model's {n} learned "
                                   "positions (its whole context); start a new conversation or shorten the prompt")
            else:
                positions = offset + mx.arange(input_ids.shape[1])
            h = h + self.embed_positions(positions)
        return h

    def __call__(self, input_ids, cache):
        h = self.embed(input_ids, cache[0].offset)
        for layer, c in zip(self.layers[: self._n_main], cache):
            h = layer(h, c)
        return self.norm(h)


class Decoder(nn.Module):
    def __init__(self, spec: ModelSpec, build: Callable[[int, LayerSpec], nn.Module] = build_block):
        super().__init__()
        self.spec = spec
        self.model = Body(spec, build)
        if not spec.tie_embeddings:
            self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)

    def make_cache(self, rollback: int = 0, paged: bool = False, *, kv_bits=None, kv_group_size: int = 64,
                   quantized_kv_start: int = 0, max_kv_size=None, **paged_options) -> list:
        """One cache per layer; `rollback` > 0 lets callers `trim` that many tokens after a step.
        paged=True: paged caches sharing one block pool (options: num_blocks, block_size, prefix_cache); any step can be
        rolled back while its blocks are kept, so `rollback` does not apply.
        kv_bits=4|8: every layer's keys/values (MLA: latent rows) stored quantized in groups of kv_group_size;
        quantized_kv_start=N: float until a cache holds N tokens, then quantized (not paged). max_kv_size=N: every
        layer keeps at most N tokens (attention sinks + recent window: changes the output past N)."""
        if not isinstance(quantized_kv_start, int) or quantized_kv_start < 0:
            raise ValueError(f"quantized_kv_start must be a token count >= 0, got {quantized_kv_start!r}")
        if quantized_kv_start and (kv_bits is None or paged):
            raise ValueError("quantized_kv_start applies only with kv_bits and paged=False (a paged pool is quantized "
                             "from its first block); leave it out")
        if paged and max_kv_size is not None:
            raise ValueError("max_kv_size does not apply to paged caches (their pool bounds memory); leave one out")
        if paged:
            from .parts.paged_cache import make_paged_cache

            return make_paged_cache(self.spec, kv_bits=kv_bits, kv_group_size=kv_group_size, **paged_options)
        if paged_options:
            raise TypeError(f"cache options {sorted(paged_options)} apply to paged=True only")
        caches = [make_layer_cache(layer.attn, rollback, max_kv_size) for layer in self.spec.layers]
        if kv_bits is None:
            return caches
        from .parts.paged_quantized import check_kv_quantization
        from .parts.quantized_cache import quantize_cache

        check_kv_quantization(self.spec, kv_bits, kv_group_size)
        return [quantize_cache(c, kv_bits, kv_group_size, quantized_kv_start) for c in caches]

    def make_mtp_cache(self, rollback: int = 0) -> list:
        """One cache per MTP module (empty if the checkpoint has none)."""
        return [make_layer_cache(layer.attn, rollback) for layer in self.spec.mtp]

    @property
    def mtp_modules(self) -> list:
        return self.model.layers[self.model._n_main :]

    def mtp_step(self, k: int, tokens, h, cache):
        """MTP module k: tokens (B, T) t_{i+k+1}, h (B, T, D) of the previous depth -> (h', logits)."""
        module = self.mtp_modules[k]
        h = module.predict(self.model.embed_tokens(tokens), h, cache)
        return h, self.head(module.shared_head.norm(h))

    def head(self, h):
        """Hidden states (B, T, hidden) -> logits (B, T, vocab)."""
        logits = self.lm_head(h) if "lm_head" in self else self.model.embed_tokens.as_linear(h)
        cap = self.spec.final_softcap
        return logits if cap is None else mx.tanh(logits / cap) * cap

    def __call__(self, input_ids, cache: Optional[list] = None):
        """input_ids (B, T) int32 -> logits (B, T, vocab); `cache` is updated in place."""
        if cache is None:
            cache = self.make_cache()
        return self.head(self.model(input_ids, cache))
