"""Quantized caches (kv_bits=4|8, not paged) for every layer kind: contiguous, sliding window (rotating), chunked,
MLA latent and the bounded sink cache (max_kv_size).

Each stored row (one KV head's key or value of a token, or MLA's row [latent | k_rope]) is `mx.quantize`d alone:
codes with a float scale and bias per group of `group_size` along its last axis. The three are packed side by side
into one array of the float dtype, the codes bit-cast (`pack`), so a row stays one row of one array: the float
cache's own bookkeeping (growth, ring slots, window, chunk, sinks, trim) runs unchanged on packed rows. A step
dequantizes what it attends to (dequantize-then-attend: masks, softcap, sink rotation and MLA's folded heads stay
the float cache's), except a decode step over KV heads, which attends on the codes (quantized_attend: faster here).
Since rows are quantized alone, a token's stored row does not depend on how the prompt was split into steps: cached
decode equals one prefill up to float rounding.

quantized_kv_start=N (mlx-lm's --quantized-kv-start): the cache keeps float rows until a step leaves it holding N
tokens, then converts every held row once, to exactly what quantizing each row on arrival would have stored.

    cache = model.make_cache(kv_bits=8, kv_group_size=64, quantized_kv_start=0, max_kv_size=None)
"""

import mlx.core as mx

from .cache import ChunkedKVCache, KVCache, LatentCache, RotatingKVCache
from .paged_quantized import KV_BITS, KV_GROUP_SIZES
from .sink_cache import SinkKVCache

__all__ = ["QuantizedKVCache", "QuantizedRotatingKVCache", "QuantizedChunkedKVCache", "QuantizedLatentCache",
           "QuantizedSinkKVCache", "quantize_cache"]

def pack(x, bits: int, group_size: int):
    """(..., D) float rows -> (..., W) in x's dtype: [codes | scales | biases], the uint32 codes bit-cast."""
    codes, scales, biases = mx.quantize(x, group_size, bits)
    return mx.concatenate([codes.view(x.dtype), scales, biases], axis=-1)


def pack_parts(codes, scales, biases, bits: int, group_size: int):
    """pack() from the parts mx.quantize returned (a saved state); ValueError when they do not fit together."""
    if codes.dtype != mx.uint32 or scales.dtype != biases.dtype or scales.dtype not in (mx.float32, mx.float16,
                                                                                          mx.bfloat16):
        raise ValueError("quantized rows need uint32 codes and float scales and biases of one dtype")
    if scales.shape != biases.shape or codes.shape[:-1] != scales.shape[:-1] \
            or codes.shape[-1] * 32 != scales.shape[-1] * group_size * bits:
        raise ValueError(f"codes {codes.shape} do not fit scales {scales.shape} at {bits} bits in groups of "
                         f"{group_size}")
    return mx.concatenate([codes.view(scales.dtype), scales, biases], axis=-1)


def unpack(p, bits: int, group_size: int) -> list:
    """pack()'s inverse -> [codes (..., D * bits / 32) uint32, scales (..., D / g), biases (..., D / g)]."""
    # per group: g * bits / (8 * itemsize) code units, one scale, one bias
    units = group_size * bits // (8 * p.dtype.size)
    groups = p.shape[-1] // (units + 2)
    c = groups * units
    return [p[..., :c].view(mx.uint32), p[..., c: c + groups], p[..., c + groups:]]


def dequantize(p, bits: int, group_size: int, dtype):
    return mx.dequantize(*unpack(p, bits, group_size), group_size, bits).astype(dtype)


def quantized_attend(q, keys, values, scale: float, bits: int, group_size: int, mask=None, softcap=None):
    """Attention with mx.quantized_matmul on the packed rows' codes, never widened (mlx-lm's quantized SDPA):
    q (B, H, T, D), keys/values packed (B, Hkv, S, W), mask None or bool (T, S) -> (B, H, T, Dv). For decode on the
    KV heads' caches, where one layer's decode step measured 1.7-2.8x faster than dequantize-then-attend at 4k-16k
    tokens and equal at 1k (4 KV heads of 64, 8 and 4 bits; this project's busy 2-core x86 CPU, min of 15). MLA's
    folded rows measured 2x slower with it, so the latent cache keeps dequantize-then-attend."""
    B, H, T, D = q.shape
    Hkv = keys.shape[1]
    qg = (q * scale).reshape(B, Hkv, H // Hkv, T, D)  # (B, Hkv, G, T, D): each group over its KV head
    k = [a[:, :, None] for a in unpack(keys, bits, group_size)]  # (B, Hkv, 1, S, .)
    scores = mx.quantized_matmul(qg, *k, transpose=True, group_size=group_size, bits=bits)  # (B, Hkv, G, T, S)
    if softcap is not None:
        scores = mx.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = mx.where(mask, scores, mx.array(-mx.inf, scores.dtype))
    weights = mx.softmax(scores.astype(mx.float32), axis=-1).astype(scores.dtype)
    v = [a[:, :, None] for a in unpack(values, bits, group_size)]
    out = mx.quantized_matmul(weights, *v, transpose=False, group_size=group_size, bits=bits)  # (B, Hkv, G, T, Dv)
    return out.reshape(B, H, T, -1).astype(q.dtype)


class Quantized:
    """Mixed in before a float cache class: the rows it stores are packed (once `quantized`), and a step gets them
    dequantized. Built by quantize_cache (or from_state), never directly."""

    bits = group_size = None
    quantized_kv_start = 0  # tokens held before the rows are quantized
    quantized = True
    STORED = ("keys", "values", "rows")  # the float classes' row buffers

    def _store(self, x):
        """New float rows -> what the cache keeps, in the dtype of the rows it holds: packed codes cast to another
        float dtype (a concatenate or a write into the buffer) would be changed as numbers."""
        held = next((a for a in (getattr(self, name, None) for name in self.STORED) if a is not None), None)
        x = x if held is None else x.astype(held.dtype)
        return pack(x, self.bits, self.group_size) if self.quantized else x

    def _load(self, x, dtype):
        """Kept rows -> float rows to attend to."""
        return dequantize(x, self.bits, self.group_size, dtype) if self.quantized and x is not None else x

    def _after_step(self) -> None:
        if not self.quantized and self.offset >= self.quantized_kv_start:
            for name in self.STORED:
                if getattr(self, name, None) is not None:
                    setattr(self, name, pack(getattr(self, name), self.bits, self.group_size))
            self.quantized = True

    def update_and_fetch(self, *new):
        # new: (k, v) each (B, n_kv, T, D), or MLA's rows (B, 1, T, kv_lora + rope) -> all held rows, float
        held = super().update_and_fetch(*(self._store(x) for x in new))
        held = (held,) if len(new) == 1 else held
        out = tuple(self._load(h, x.dtype) for h, x in zip(held, new))
        self._after_step()
        return out[0] if len(new) == 1 else out

    @property
    def state(self):
        arrays = super().state
        if not self.quantized:
            return arrays
        # each row buffer as [codes, scales, biases] (as mlx-lm saves its quantized cache); others (RoPE periods) as is
        return tuple(p for a in arrays for p in (unpack(a, self.bits, self.group_size) if a.ndim == 4 else (a,)))

    @property
    def meta_state(self) -> dict:
        return {**super().meta_state, "bits": str(self.bits), "group_size": str(self.group_size),
                "quantized_kv_start": str(self.quantized_kv_start), "quantized": str(int(self.quantized))}

    @classmethod
    def from_state(cls, state, meta_state: dict):
        bits, group_size = int(meta_state["bits"]), int(meta_state["group_size"])
        if bits not in KV_BITS or group_size not in KV_GROUP_SIZES:
            raise ValueError(f"bits {bits} / group_size {group_size} is not a KV quantization")
        quantized = meta_state.get("quantized", "1") == "1"  # files from before quantized_kv_start: from the start
        arrays = list(state)
        if quantized:  # row buffers come as 3 parts each, then the rest (a sink cache's RoPE periods)
            n = len(arrays) // 3 * 3
            arrays = [pack_parts(*arrays[i: i + 3], bits, group_size) for i in range(0, n, 3)] + arrays[n:]
        c = super().from_state(arrays, meta_state)
        c.bits, c.group_size, c.quantized = bits, group_size, quantized
        c.quantized_kv_start = int(meta_state.get("quantized_kv_start", "0"))
        return c


class QuantizedHeads(Quantized):
    """The KV heads' kinds (contiguous, rotating, chunked): a decode step attends with quantized_attend on the codes,
    under the float class's mask; a longer step dequantizes (the fused attention takes its causal mask)."""

    def attend(self, q, k, v, scale: float, softcap=None):
        # q: (B, H, T, D); k, v: (B, Hkv, T, D) for the T new tokens
        if not self.quantized or q.shape[2] != 1:
            return super().attend(q, k, v, scale, softcap)
        mask = self.mask(1)  # None or bool (1, S), asked before the update as Cache.attend does
        keys, values = super(Quantized, self).update_and_fetch(self._store(k), self._store(v))  # packed, held
        return quantized_attend(q, keys, values, scale, self.bits, self.group_size, mask, softcap)


class QuantizedKVCache(QuantizedHeads, KVCache):
    pass


class QuantizedRotatingKVCache(QuantizedHeads, RotatingKVCache):
    pass


class QuantizedChunkedKVCache(QuantizedHeads, ChunkedKVCache):
    pass


class QuantizedLatentCache(Quantized, LatentCache):
    pass


class QuantizedSinkKVCache(Quantized, SinkKVCache):
    """SinkKVCache stores and reads its rows through _store/_load; the conversion comes after its whole step."""

    def attend(self, q, k, v, scale: float, softcap=None):
        out = super().attend(q, k, v, scale, softcap)
        self._after_step()
        return out


QUANTIZED = {KVCache: QuantizedKVCache, RotatingKVCache: QuantizedRotatingKVCache,
             ChunkedKVCache: QuantizedChunkedKVCache, LatentCache: QuantizedLatentCache,
             SinkKVCache: QuantizedSinkKVCache}


def quantize_cache(cache, bits: int, group_size: int, start: int = 0):
    """The quantized kind of an empty float layer cache (same window, chunk, sinks, rollback), rebuilt from its state
    as a prompt-cache file would be; rows float until it holds `start` tokens."""
    meta = {**cache.meta_state, "bits": str(bits), "group_size": str(group_size), "quantized_kv_start": str(start),
            "quantized": str(int(start == 0))}
    return QUANTIZED[type(cache)].from_state(cache.state, meta)
