"""Bounded cache for any model (`max_kv_size`): StreamingLLM's rolling cache with attention sinks.

Xiao et al. 2023 ("Efficient Streaming Language Models with Attention Sinks"): keep the first `keep` tokens (the
sinks most heads park attention on) and the most recent `window`, so memory stays flat however long the stream.
Positions follow the paper's rolling cache: they are positions *in the cache*, not in the text. Query t sees the
sinks at cache positions 0..keep-1 and the window right after them, itself last.

The layer has already rotated q and k at their text positions. Between the query and a window key that is the same
distance as in the cache (the window is contiguous), so only the sinks move: sink i must look as if it sat just
before the window, i.e. rotated by s_t = max(0, t - window + 1 - keep) more. Rotating the query back by s_t instead
gives the same score (rotations are orthogonal), and costs one rotation per query rather than one per sink and query.

This changes the model's output once a sequence outgrows `keep + window` tokens (before that it is exact).
"""


import mlx.core as mx

from .cache import Cache
from .sdpa import attend


def rotate(x, positions, freqs, start: int, dims: int, traditional: bool):
    """Rotate features start..start+dims of x (..., T, D) by RoPE angles positions (T,) / freqs (dims/2,), as
    mx.fast.rope with explicit freqs does (a pure rotation: no YaRN factor)."""
    angles = positions.astype(mx.float32)[:, None] / freqs[None]  # (T, dims/2)
    cos, sin = mx.cos(angles), mx.sin(angles)
    r = x[..., start: start + dims].astype(mx.float32)
    if traditional:
        a, b = r[..., 0::2], r[..., 1::2]
        out = mx.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(r.shape)
    else:
        half = dims // 2
        a, b = r[..., :half], r[..., half:]
        out = mx.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    return mx.concatenate([x[..., :start], out.astype(x.dtype), x[..., start + dims:]], axis=-1)


class SinkKVCache(Cache):
    """At most keep + window - 1 tokens kept: the sinks, then the most recent tokens in temporal order.

    freqs: the layer's RoPE periods (dims/2,), as RoPE passes them to mx.fast.rope; None for a NoPE layer (nothing
    to move). The rotated features are rot_start..rot_start+dims of q and k. MLA (latent=True): the keys are the
    rows [latent | k_rope] shared by all heads (rot_start = kv_lora_rank), the values their first rot_start
    features, so only rows are kept. Each step concatenates and re-slices the kept tokens: O(keep + window) per
    step, like attention itself.
    """

    absorbed_only = True  # MLA attends through `attend` (absorbed) at every length: see MLA.__call__

    def __init__(self, keep: int, window: int, freqs: mx.array | None = None, dims: int = 0,
                 traditional: bool = False, rot_start: int = 0, latent: bool = False):
        if keep < 0 or window < 1:
            raise ValueError(f"a sink cache needs keep >= 0 and window >= 1 (got keep={keep}, window={window})")
        self.keep, self.window = keep, window
        self.freqs, self.dims, self.traditional = freqs, dims, traditional
        self.rot_start, self.latent = rot_start, latent
        self.keys = self.values = None  # (B, Hkv, kept, D); MLA: keys (B, 1, kept, kv_lora + rope), no values
        self.offset = 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.keys, self.values) if a is not None)

    @property
    def kept(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def _positions(self, T: int):
        """Text positions of the kept tokens followed by the T new ones: sinks 0.., then a contiguous run."""
        sinks = min(self.keep, self.offset)
        return mx.concatenate([mx.arange(sinks), mx.arange(self.offset - (self.kept - sinks), self.offset + T)])

    def _store(self, x):
        """New rows -> what the cache keeps (a quantized subclass packs them)."""
        return x

    def _load(self, x, dtype):
        """Kept rows -> rows to attend to."""
        return x

    def attend(self, q, k, v, scale: float, softcap=None):
        # q: (B, H, T, D); k, v: (B, Hkv, T, D) for the T new tokens, rotated at their text positions
        T, dtype = q.shape[2], k.dtype
        k, v = self._store(k), None if self.latent else self._store(v)
        if self.keys is not None:
            k = mx.concatenate([self.keys, k], axis=2)
            v = None if self.latent else mx.concatenate([self.values, v], axis=2)
        S = k.shape[2]
        n_sinks = min(self.keep, self.offset + T)  # the first n_sinks keys are the sinks
        step = self._decode if T == 1 else self._prefill
        k_float = self._load(k, dtype)
        v_float = k_float[..., : self.rot_start] if self.latent else self._load(v, dtype)  # MLA: the latent part
        out = step(q, k_float, v_float, n_sinks, scale, softcap)
        # keep the sinks and the window - 1 most recent others: all the next query can see
        recent = min(S - n_sinks, self.window - 1)
        self.keys = mx.concatenate([k[..., :n_sinks, :], k[..., S - recent:, :]], axis=2)
        if not self.latent:
            self.values = mx.concatenate([v[..., :n_sinks, :], v[..., S - recent:, :]], axis=2)
        self.offset += T
        return out

    def _decode(self, q, k, v, n_sinks: int, scale: float, softcap):
        """One query sees every key held (the sinks and the window): rotate the few sinks by its one shift and
        use the fused attention."""
        shift = max(self.offset - self.window + 1 - self.keep, 0)
        if self.freqs is not None and shift > 0:
            sinks = rotate(k[..., :n_sinks, :], mx.full((n_sinks,), shift), self.freqs, self.rot_start, self.dims,
                           self.traditional)
            k = mx.concatenate([sinks, k[..., n_sinks:, :]], axis=2)
        return attend(q, k, v, scale, None, softcap)

    def _prefill(self, q, k, v, n_sinks: int, scale: float, softcap):
        """T queries, each with its own shift: the sink scores use each query rotated back by it, then one
        softmax over [sinks | others] under the window mask."""
        B, H, T, D = q.shape
        Hkv = k.shape[1]
        pos = self._positions(T)  # (S,)
        t = mx.arange(self.offset, self.offset + T)  # (T,) text positions of the queries
        shift = mx.maximum(t - self.window + 1 - self.keep, 0)  # (T,) how far each query's sinks move
        q = q.reshape(B, Hkv, H // Hkv, T, D)
        q_sink = q
        if self.freqs is not None and self.offset + T > self.keep + self.window - 1:
            q_sink = rotate(q, -shift, self.freqs, self.rot_start, self.dims, self.traditional)
        kt = k[:, :, None].swapaxes(-1, -2)  # (B, Hkv, 1, D, S)
        scores = mx.concatenate([(q_sink * scale) @ kt[..., :n_sinks], (q * scale) @ kt[..., n_sinks:]], axis=-1)
        if softcap is not None:
            scores = mx.tanh(scores / softcap) * softcap
        visible = (pos[None] <= t[:, None]) & ((pos[None] < self.keep) | (t[:, None] - pos[None] < self.window))
        scores = mx.where(visible, scores, mx.array(-mx.inf, scores.dtype))  # (B, Hkv, G, T, S)
        weights = mx.softmax(scores.astype(mx.float32), axis=-1).astype(v.dtype)
        return (weights @ v[:, :, None]).reshape(B, H, T, -1)

    def trim(self, n: int) -> int:
        if self.kept != self.offset:
            raise ValueError("cannot roll back a bounded (max_kv_size) cache once it has dropped tokens: "
                             "drop --max-kv-size for speculative decoding")
        n = min(n, self.offset)
        self.keys = self.keys[..., : self.offset - n, :]
        if not self.latent:
            self.values = self.values[..., : self.offset - n, :]
        self.offset -= n
        return n

    @property
    def state(self):
        arrays = () if self.keys is None else (self.keys,) if self.latent else (self.keys, self.values)
        return arrays + (() if self.freqs is None else (self.freqs,))

    @property
    def meta_state(self) -> dict:
        return {"offset": str(self.offset), "keep": str(self.keep), "window": str(self.window), "dims": str(self.dims),
                "traditional": str(int(self.traditional)), "rope": str(int(self.freqs is not None)),
                "rot_start": str(self.rot_start), "latent": str(int(self.latent))}

    @classmethod
    def from_state(cls, state, meta_state: dict):
        names = ("offset", "keep", "window", "dims", "traditional", "rope", "rot_start", "latent")
        m = {k: int(meta_state[k]) for k in names}
        state = list(state)
        freqs = state.pop() if m["rope"] else None
        c = cls(m["keep"], m["window"], freqs, m["dims"], bool(m["traditional"]), m["rot_start"], bool(m["latent"]))
        if state:
            c.keys, c.values = (state[0], None) if c.latent else state
        c.offset = m["offset"]
        return c
