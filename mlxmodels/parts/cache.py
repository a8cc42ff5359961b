"""KV caches, one per layer, chosen from the layer's spec by `make_layer_cache`.

A layer asks its cache for the mask of the next `T` queries (before the update), then hands it the new keys and
values and gets back everything it should attend to. Positions come from `cache.offset`, the number of tokens
the sequence has seen, whatever the cache keeps.
"""

from functools import lru_cache
from typing import Optional

import mlx.core as mx

from ..spec import MLASpec
from .sdpa import attend


def window_mask(q_start: int, T: int, k_start: int, S: int, window: Optional[int] = None, chunk: Optional[int] = None):
    """Boolean (T, S) mask for queries at q_start.. over keys at absolute positions k_start..k_start + S - 1."""
    q = mx.arange(q_start, q_start + T)[:, None]
    k = mx.arange(k_start, k_start + S)[None, :]
    visible = k <= q
    if window is not None:
        visible = visible & (q - k < window)
    if chunk is not None:
        visible = visible & (q // chunk == k // chunk)
    return visible


@lru_cache(maxsize=4)
def folded_causal_mask(start: int, T: int, heads: int):
    """(heads * T, start + T) causal mask for T queries at start.. with the heads folded into the query axis.
    Every MLA layer of a step asks for the same one, so it is built once per step."""
    return mx.tile(window_mask(start, T, 0, start + T), (heads, 1))


class Cache:
    """What every KV cache offers a layer: store the new keys/values and attend over what it holds.

    Saved as mlx-lm saves its caches: `state` (the arrays it keeps, nothing else), `meta_state` (str -> str: offsets,
    sizes) and `from_state(state, meta_state)`, which gives a cache that answers exactly as the saved one.
    """

    keys = values = None

    @property
    def state(self):
        return self.keys, self.values

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes

    def attend(self, q, k, v, scale: float, softcap=None):
        # q: (B, H, T, D); k, v: (B, Hkv, T, D) for the T new tokens
        mask = self.mask(q.shape[2])
        k, v = self.update_and_fetch(k, v)
        return attend(q, k, v, scale, mask, softcap)


def append(buf, new, used: int, step: int = 256):
    """Write new (B, H, T, D) after the first `used` positions of buf, growing it in steps; -> (buf, used + T)."""
    end = used + new.shape[2]
    if buf is None or end > buf.shape[2]:
        n = ((new.shape[2] + step - 1) // step) * step
        grown = mx.zeros((*new.shape[:2], n, new.shape[3]), new.dtype)
        buf = grown if buf is None else mx.concatenate([buf[..., :used, :], grown], axis=2)
    buf[..., used:end, :] = new
    return buf, end


class KVCache(Cache):
    """Contiguous cache; grows in steps of 256 tokens so decode does not reallocate every token."""

    def __init__(self):
        self.keys = self.values = None
        self.offset = 0

    def mask(self, T: int):
        # "causal" is aligned bottom-right by mx.fast.scaled_dot_product_attention, which is what a chunk after
        # `offset` cached tokens needs.
        return None if T == 1 else "causal"

    def update_and_fetch(self, k, v):
        # k: (B, n_kv, T, Dk), v: (B, n_kv, T, Dv)
        self.keys, _ = append(self.keys, k, self.offset)
        self.values, self.offset = append(self.values, v, self.offset)
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    def trim(self, n: int) -> int:
        """Forget the last n tokens (speculative rollback); returns how many were forgotten."""
        n = min(n, self.offset)
        self.offset -= n
        return n

    @property
    def state(self):
        return () if self.keys is None else (self.keys[..., : self.offset, :], self.values[..., : self.offset, :])

    @property
    def meta_state(self) -> dict:
        return {"offset": str(self.offset)}

    @classmethod
    def from_state(cls, state, meta_state: dict):
        c = cls()
        if state:
            c.keys, c.values = state
        c.offset = int(meta_state["offset"])
        return c


class RotatingKVCache(Cache):
    """Sliding-window cache holding at most `window + slack` tokens, so memory is bounded by the window.

    `slack` extra tokens let a speculative step be rolled back (`trim`) without losing keys the window still
    needs. Decode writes one token into a ring buffer (slot order does not matter to attention: RoPE is already
    applied), masking the `slack` oldest slots. A multi-token step first puts the buffer back in temporal order,
    attends over old + new with an explicit window mask, then keeps the last `window + slack` tokens.
    """

    def __init__(self, window: int, slack: int = 0):
        self.window, self.capacity = window, window + slack
        self.keys = self.values = None
        self.offset = 0
        self._idx = 0  # next ring slot to write once the buffer is full

    @property
    def kept(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def _temporal(self):
        if self.keys is None or self._idx == 0:
            return self.keys, self.values
        i = self._idx
        k = mx.concatenate([self.keys[..., i:, :], self.keys[..., :i, :]], axis=2)
        v = mx.concatenate([self.values[..., i:, :], self.values[..., :i, :]], axis=2)
        return k, v

    def _ring_mode(self, T: int) -> bool:
        return T == 1 and self.kept == self.capacity

    def mask(self, T: int):
        if self._ring_mode(T):
            if self.capacity == self.window:
                return None  # the ring holds exactly the visible keys
            age = (self._idx - mx.arange(self.capacity)) % self.capacity  # 0 for the slot about to be written
            return (age < self.window)[None]
        return window_mask(self.offset, T, self.offset - self.kept, self.kept + T, window=self.window)

    def update_and_fetch(self, k, v):
        T = k.shape[2]
        if self._ring_mode(T):
            self.keys[..., self._idx : self._idx + 1, :] = k
            self.values[..., self._idx : self._idx + 1, :] = v
            self._idx = (self._idx + 1) % self.capacity
            self.offset += 1
            return self.keys, self.values
        old_k, old_v = self._temporal()
        if old_k is not None:
            k = mx.concatenate([old_k, k], axis=2)
            v = mx.concatenate([old_v, v], axis=2)
        self.keys, self.values = k[..., -self.capacity :, :], v[..., -self.capacity :, :]
        self._idx = 0
        self.offset += T
        return k, v

    def trim(self, n: int) -> int:
        if n > self.kept - min(self.window - 1, self.offset - n):
            raise ValueError(f"cannot roll a sliding-window cache back {n} tokens: make the cache with "
                             f"model.make_cache(rollback={n}) or more")
        k, v = self._temporal()
        self.keys, self.values = k[..., : self.kept - n, :], v[..., : self.kept - n, :]
        self._idx = 0
        self.offset -= n
        return n

    @property
    def state(self):
        return () if self.keys is None else self._temporal()

    @property
    def meta_state(self) -> dict:
        return {"offset": str(self.offset), "window": str(self.window), "slack": str(self.capacity - self.window)}

    @classmethod
    def from_state(cls, state, meta_state: dict):
        c = cls(int(meta_state["window"]), int(meta_state["slack"]))
        if state:
            c.keys, c.values = state  # temporal order: the ring starts at slot 0
        c.offset = int(meta_state["offset"])
        return c


class ChunkedKVCache(Cache):
    """Chunked attention (Llama 4): a query sees only keys of its own chunk of `chunk` positions, so the cache
    keeps only the current chunk (memory bounded by the chunk); with `slack` > 0 it keeps the chunk of the oldest
    position a rollback may return to."""

    def __init__(self, chunk: int, slack: int = 0):
        self.chunk, self.slack = chunk, slack
        self.keys = self.values = None
        self.start = 0  # absolute position of keys[..., 0, :]
        self.offset = 0

    def mask(self, T: int):
        if T == 1 and self.start >= self.offset // self.chunk * self.chunk:
            return None  # every kept key is in the query's chunk
        return window_mask(self.offset, T, self.start, self.offset - self.start + T, chunk=self.chunk)

    def update_and_fetch(self, k, v):
        used = self.offset - self.start
        self.keys, _ = append(self.keys, k, used)
        self.values, used = append(self.values, v, used)
        keys, values = self.keys[..., :used, :], self.values[..., :used, :]
        self.offset += k.shape[2]
        start = max((self.offset - self.slack) // self.chunk * self.chunk, self.start)
        if start > self.start:  # the next query opens a new chunk: forget the old one
            drop = start - self.start
            self.keys, self.values = keys[..., drop:, :], values[..., drop:, :]
            self.start = start
        return keys, values

    def trim(self, n: int) -> int:
        if (self.offset - n) // self.chunk * self.chunk < self.start:
            raise ValueError(f"cannot roll a chunked cache back {n} tokens: make the cache with "
                             f"model.make_cache(rollback={n}) or more")
        self.keys, self.values = self.keys[..., : self.offset - n - self.start, :], self.values[..., : self.offset - n - self.start, :]
        self.offset -= n
        return n

    @property
    def state(self):
        used = self.offset - self.start
        return () if self.keys is None else (self.keys[..., :used, :], self.values[..., :used, :])

    @property
    def meta_state(self) -> dict:
        return {"offset": str(self.offset), "start": str(self.start), "chunk": str(self.chunk),
                "slack": str(self.slack)}

    @classmethod
    def from_state(cls, state, meta_state: dict):
        c = cls(int(meta_state["chunk"]), int(meta_state["slack"]))
        if state:
            c.keys, c.values = state
        c.offset, c.start = int(meta_state["offset"]), int(meta_state["start"])
        return c


class LatentCache(Cache):
    """MLA: one row [latent, k_rope] per token, shared by all heads; nothing per head is stored."""

    def __init__(self, value_dims: int):
        self.value_dims = value_dims  # the first value_dims features of a row are the latent (the values)
        self.rows = None
        self.offset = 0

    mask = KVCache.mask
    trim = KVCache.trim

    def update_and_fetch(self, rows):
        # rows: (B, 1, T, kv_lora + rope)
        self.rows, self.offset = append(self.rows, rows, self.offset)
        return self.rows[..., : self.offset, :]

    def attend(self, q, rows, _values, scale: float, softcap=None):
        """Absorbed attention: q (B, H, T, kv_lora + rope) over the cached rows -> (B, H, T, kv_lora).

        All heads share the one row per token, so the heads are folded into the query axis (B, 1, H * T, D):
        a single-KV-head attention. Left as (B, H, T, D), MLX's CPU path broadcasts the rows to every head
        (a copy of H x context x kv_lora per layer and step; it crashed near 29k tokens with 128 heads)."""
        B, H, T, D = q.shape
        start = self.offset
        rows = self.update_and_fetch(rows)
        mask = None if T == 1 else folded_causal_mask(start, T, H)  # (H * T, S)
        out = attend(q.reshape(B, 1, H * T, D), rows, rows[..., : self.value_dims], scale, mask, softcap)
        return out.reshape(B, H, T, -1)

    @property
    def state(self):
        return () if self.rows is None else (self.rows[..., : self.offset, :],)

    @property
    def meta_state(self) -> dict:
        return {"offset": str(self.offset), "value_dims": str(self.value_dims)}

    @classmethod
    def from_state(cls, state, meta_state: dict):
        c = cls(int(meta_state["value_dims"]))
        if state:
            (c.rows,) = state
        c.offset = int(meta_state["offset"])
        return c

    @property
    def nbytes(self) -> int:
        return 0 if self.rows is None else self.rows.nbytes


SINKS = 4  # attention sinks a bounded cache keeps (StreamingLLM's choice, and mlx-lm's keep)


def make_bounded_cache(attn, max_kv_size: int):
    """A layer's cache holding at most max_kv_size tokens: its own window or chunk when that is no larger, else
    StreamingLLM's rolling cache (sinks + recent window; changes the output past max_kv_size tokens)."""
    from .sink_cache import SinkKVCache  # it subclasses Cache: imported late to avoid the cycle

    if max_kv_size <= SINKS:
        raise ValueError(f"max_kv_size must be more than {SINKS} (the attention sinks it always keeps); "
                         f"got {max_kv_size}")
    latent = isinstance(attn, MLASpec)  # MLA: rows [latent | k_rope], the rope part rotated
    if not latent and attn.window is not None and attn.window <= max_kv_size:
        return RotatingKVCache(attn.window)
    if not latent and attn.chunk is not None and attn.chunk <= max_kv_size:
        return ChunkedKVCache(attn.chunk)
    rope = attn.rope
    if rope is None:
        return SinkKVCache(SINKS, max_kv_size - SINKS)
    if rope.kind == "dynamic":
        raise ValueError("max_kv_size: dynamic NTK RoPE changes every position's angle with the length, so a "
                         "rolling cache cannot move its sinks; leave max_kv_size out")
    from .rope import RoPE

    start = attn.kv_lora_rank if latent else 0
    return SinkKVCache(SINKS, max_kv_size - SINKS, RoPE(rope)._freqs, rope.dims, rope.traditional, start, latent)


def make_layer_cache(attn, rollback: int = 0, max_kv_size=None):
    """`rollback`: how many tokens a caller may `trim` after a step (speculative decoding). `max_kv_size`: bound
    the cache (make_bounded_cache)."""
    if max_kv_size is not None:
        return make_bounded_cache(attn, max_kv_size)
    if isinstance(attn, MLASpec):
        return LatentCache(attn.kv_lora_rank)
    if attn.window is not None:
        return RotatingKVCache(attn.window, rollback)
    if attn.chunk is not None:
        return ChunkedKVCache(attn.chunk, rollback)
    return KVCache()
