"""KV caches, one per layer, chosen from the layer's spec by `make_layer_cache`.

A layer asks its cache for the mask of the next `T` queries (before the update), then hands it the new keys and
values and gets back everything it should attend to. Positions come from `cache.offset`, the number of tokens
the sequence has seen, whatever the cache keeps.
"""

from typing import Optional

import mlx.core as mx

from ..spec import AttnSpec
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


class Cache:
    """What every KV cache offers a layer: store the new keys/values and attend over what it holds."""

    def attend(self, q, k, v, scale: float, softcap=None):
        # q: (B, H, T, D); k, v: (B, Hkv, T, D) for the T new tokens
        mask = self.mask(q.shape[2])
        k, v = self.update_and_fetch(k, v)
        return attend(q, k, v, scale, mask, softcap)


class KVCache(Cache):
    """Contiguous cache; grows in steps of `step` tokens so decode does not reallocate every token."""

    step = 256

    def __init__(self):
        self.keys = self.values = None
        self.offset = 0

    def mask(self, T: int):
        # "causal" is aligned bottom-right by mx.fast.scaled_dot_product_attention, which is what a chunk after
        # `offset` cached tokens needs.
        return None if T == 1 else "causal"

    def update_and_fetch(self, k, v):
        # k: (B, n_kv, T, Dk), v: (B, n_kv, T, Dv)
        T = k.shape[2]
        end = self.offset + T
        if self.keys is None or end > self.keys.shape[2]:
            n = ((T + self.step - 1) // self.step) * self.step
            grow_k = mx.zeros((*k.shape[:2], n, k.shape[3]), k.dtype)
            grow_v = mx.zeros((*v.shape[:2], n, v.shape[3]), v.dtype)
            if self.keys is None:
                self.keys, self.values = grow_k, grow_v
            else:
                self.keys = mx.concatenate([self.keys[..., : self.offset, :], grow_k], axis=2)
                self.values = mx.concatenate([self.values[..., : self.offset, :], grow_v], axis=2)
        self.keys[..., self.offset : end, :] = k
        self.values[..., self.offset : end, :] = v
        self.offset = end
        return self.keys[..., :end, :], self.values[..., :end, :]

    def trim(self, n: int) -> int:
        """Forget the last n tokens (speculative rollback); returns how many were forgotten."""
        n = min(n, self.offset)
        self.offset -= n
        return n

    @property
    def state(self):
        return self.keys, self.values

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes


class RotatingKVCache(Cache):
    """Sliding-window cache holding at most `window` tokens, so memory is bounded by the window.

    Decode writes one token into a ring buffer (slot order does not matter to attention: RoPE is already applied
    and the buffer holds exactly the visible keys). A multi-token step first puts the buffer back in temporal
    order, attends over old + new with an explicit window mask, then keeps the last `window` tokens.
    """

    def __init__(self, window: int):
        self.window = window
        self.keys = self.values = None
        self.offset = 0
        self._idx = 0  # next ring slot to write

    def _temporal(self):
        if self.keys is None or self._idx == 0:
            return self.keys, self.values
        i = self._idx
        k = mx.concatenate([self.keys[..., i:, :], self.keys[..., :i, :]], axis=2)
        v = mx.concatenate([self.values[..., i:, :], self.values[..., :i, :]], axis=2)
        return k, v

    def mask(self, T: int):
        if T == 1:
            return None
        kept = 0 if self.keys is None else self.keys.shape[2]
        return window_mask(self.offset, T, self.offset - kept, kept + T, window=self.window)

    def update_and_fetch(self, k, v):
        T = k.shape[2]
        if T == 1 and self.keys is not None and self.keys.shape[2] == self.window:
            self.keys[..., self._idx : self._idx + 1, :] = k
            self.values[..., self._idx : self._idx + 1, :] = v
            self._idx = (self._idx + 1) % self.window
            self.offset += 1
            return self.keys, self.values
        old_k, old_v = self._temporal()
        if old_k is not None:
            k = mx.concatenate([old_k, k], axis=2)
            v = mx.concatenate([old_v, v], axis=2)
        self.keys, self.values = k[..., -self.window :, :], v[..., -self.window :, :]
        self._idx = 0 if self.keys.shape[2] == self.window else self.keys.shape[2]
        self.offset += T
        return k, v

    @property
    def state(self):
        return self.keys, self.values

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes


def make_layer_cache(attn: AttnSpec):
    if attn.window is not None:
        return RotatingKVCache(attn.window)
    return KVCache()
