"""Quantized contiguous caches (kv_bits=4|8, not paged): each token row is stored as `mx.quantize` codes with a
float scale and bias per group of `group_size` along its last axis, and dequantized when a step attends.

Dequantize-then-attend: the step's query then goes through the same attention as the float cache (masks, softcap,
sinks, MLA's folded heads unchanged), so only the stored rows differ from float KV. Rows are quantized alone, so a
token's stored row does not depend on how the prompt was split into steps: cached decode equals one prefill.
Sliding-window and chunked layers keep their float caches: their memory is bounded by the window already.

    cache = model.make_cache(kv_bits=8, kv_group_size=64)
"""

import mlx.core as mx

from ..spec import MLASpec
from .cache import KVCache, LatentCache, append

__all__ = ["QuantizedKVCache", "QuantizedLatentCache", "make_quantized_layer_cache"]


class QuantizedRows:
    """A growing buffer of quantized rows (B, H, S, D): codes, scales, biases each grown as `append` grows floats."""

    def __init__(self, bits: int, group_size: int):
        self.bits, self.group_size = bits, group_size
        self.parts = None  # [codes (B, H, S, D * bits / 32) uint32, scales (B, H, S, D / g), biases (B, H, S, D / g)]

    def write(self, x, used: int) -> None:
        # x: (B, H, T, D) float, written after the first `used` rows
        new = mx.quantize(x, self.group_size, self.bits)
        old = self.parts or [None] * 3
        self.parts = [append(buf, part, used)[0] for buf, part in zip(old, new)]

    def read(self, n: int, dtype):
        """The first n rows dequantized -> (B, H, n, D) in dtype."""
        codes, scales, biases = (p[..., :n, :] for p in self.parts)
        return mx.dequantize(codes, scales, biases, self.group_size, self.bits).astype(dtype)

    def rows(self, n: int) -> list:
        return [p[..., :n, :] for p in self.parts]

    @property
    def nbytes(self) -> int:
        return 0 if self.parts is None else sum(p.nbytes for p in self.parts)


class QuantizedKVCache(KVCache):
    """KVCache whose keys and values are stored quantized (trim, mask and offsets as KVCache's)."""

    def __init__(self, bits: int, group_size: int):
        super().__init__()
        self.bits, self.group_size = bits, group_size
        self.qkeys, self.qvalues = QuantizedRows(bits, group_size), QuantizedRows(bits, group_size)

    def update_and_fetch(self, k, v):
        # k: (B, n_kv, T, Dk), v: (B, n_kv, T, Dv) -> all held rows, dequantized
        self.qkeys.write(k, self.offset)
        self.qvalues.write(v, self.offset)
        self.offset += k.shape[2]
        return self.qkeys.read(self.offset, k.dtype), self.qvalues.read(self.offset, v.dtype)

    @property
    def state(self):
        return () if self.qkeys.parts is None else (*self.qkeys.rows(self.offset), *self.qvalues.rows(self.offset))

    @property
    def meta_state(self) -> dict:
        return {"offset": str(self.offset), "bits": str(self.bits), "group_size": str(self.group_size)}

    @classmethod
    def from_state(cls, state, meta_state: dict):
        c = cls(int(meta_state["bits"]), int(meta_state["group_size"]))
        if state:
            c.qkeys.parts, c.qvalues.parts = list(state[:3]), list(state[3:])
        c.offset = int(meta_state["offset"])
        return c

    @property
    def nbytes(self) -> int:
        return self.qkeys.nbytes + self.qvalues.nbytes


class QuantizedLatentCache(LatentCache):
    """MLA's rows [latent | k_rope] stored quantized whole, as they are stored in float."""

    def __init__(self, value_dims: int, bits: int, group_size: int):
        super().__init__(value_dims)
        self.bits, self.group_size = bits, group_size
        self.qrows = QuantizedRows(bits, group_size)

    def update_and_fetch(self, rows):
        # rows: (B, 1, T, kv_lora + rope) -> all held rows, dequantized
        self.qrows.write(rows, self.offset)
        self.offset += rows.shape[2]
        return self.qrows.read(self.offset, rows.dtype)

    @property
    def state(self):
        return () if self.qrows.parts is None else tuple(self.qrows.rows(self.offset))

    @property
    def meta_state(self) -> dict:
        return {**super().meta_state, "bits": str(self.bits), "group_size": str(self.group_size)}

    @classmethod
    def from_state(cls, state, meta_state: dict):
        c = cls(int(meta_state["value_dims"]), int(meta_state["bits"]), int(meta_state["group_size"]))
        if state:
            c.qrows.parts = list(state)
        c.offset = int(meta_state["offset"])
        return c

    @property
    def nbytes(self) -> int:
        return self.qrows.nbytes


def make_quantized_layer_cache(attn, bits: int, group_size: int):
    """A layer's quantized cache, or None where the layer keeps its float cache (sliding window, chunked)."""
    if isinstance(attn, MLASpec):
        return QuantizedLatentCache(attn.kv_lora_rank, bits, group_size)
    if attn.window is None and attn.chunk is None:
        return QuantizedKVCache(bits, group_size)
    return None
