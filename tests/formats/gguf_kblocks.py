"""K-quant blocks for tests: the `gguf` package dequantizes Q2_K-Q6_K but cannot quantize them in Python, so this
packs them (llama.cpp's ggml-common.h layouts, each the exact inverse of gguf.quants' dequantize_blocks) from
integer codes and scales, and quantizes float rows to them by plain min/max per sub-block (not llama.cpp's searched
scales: any valid block is what the tests need; tests check `unpack(pack(x))` against the gguf package).

A super-block is 256 weights; every function takes and returns rows of whole super-blocks.
"""

from __future__ import annotations

import numpy as np

QK = 256
SUB = {"Q2_K": 16, "Q3_K": 16, "Q4_K": 32, "Q5_K": 32, "Q6_K": 16}  # weights per sub-block
LEVELS = {"Q2_K": 4, "Q3_K": 8, "Q4_K": 16, "Q5_K": 32, "Q6_K": 64}


def _f16(x) -> np.ndarray:
    return np.asarray(x, np.float32).astype(np.float16).reshape(-1, 1).view(np.uint8)  # (n, 2)


def _low_bits(codes: np.ndarray, width: int, lanes: int) -> np.ndarray:
    """Codes (n, 256) -> bytes where byte l of chunk c holds code c*per*lanes + s*lanes + l at bits [s*width, ...)."""
    n = codes.shape[0]
    per = 8 // width
    c = codes.reshape(n, -1, per, lanes).astype(np.uint8)  # (n, chunks, shifts, lanes)
    out = np.zeros((n, c.shape[1], lanes), np.uint8)
    for s in range(per):
        out |= (c[:, :, s, :] & ((1 << width) - 1)) << (s * width)
    return out.reshape(n, -1)


def _scales_k4(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K: eight 6-bit scales and mins (n, 8) -> 12 bytes (gguf's Q4_K.get_scale_min, inverted)."""
    sc, m = sc.astype(np.uint8), m.astype(np.uint8)
    out = np.zeros((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (m[:, 0:4] & 63) | ((m[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 15) | ((m[:, 4:8] & 15) << 4)
    return out


def pack(kind: str, codes, sc, d, m=None, dmin=None) -> np.ndarray:
    """Integer codes (n, 256) in [0, LEVELS), sub-block scales (and mins) as stored, super-scales d (and dmin) ->
    blocks (n, bytes). Q3_K's sc is the signed scale (-32..31), Q6_K's a signed int8; codes are unsigned (Q3_K's
    q = code - 4, Q6_K's q = code - 32)."""
    codes = np.asarray(codes).astype(np.uint8)
    n = codes.shape[0]
    if kind == "Q2_K":
        scales = (sc.astype(np.uint8) & 15) | (m.astype(np.uint8) << 4)
        return np.concatenate([scales, _low_bits(codes, 2, 32), _f16(d), _f16(dmin)], axis=1)
    if kind == "Q3_K":
        hmask = _low_bits((codes >> 2).reshape(n, 8, 32), 1, 32)  # bit b of byte l: code b*32 + l
        v = (np.asarray(sc) + 32).astype(np.uint8)  # (n, 16) six bits
        scales = np.zeros((n, 12), np.uint8)
        scales[:, 0:8] = (v[:, 0:8] & 15) | ((v[:, 8:16] & 15) << 4)
        for s in range(4):
            scales[:, 8:12] |= (v[:, 4 * s:4 * s + 4] >> 4) << (2 * s)
        return np.concatenate([hmask, _low_bits(codes & 3, 2, 32), scales, _f16(d)], axis=1)
    if kind in ("Q4_K", "Q5_K"):
        parts = [_f16(d), _f16(dmin), _scales_k4(sc, m)]
        if kind == "Q5_K":
            parts.append(_low_bits((codes >> 4).reshape(n, 8, 32), 1, 32))
        return np.concatenate([*parts, _low_bits(codes & 15, 4, 32)], axis=1)
    if kind == "Q6_K":
        ql = _low_bits((codes & 15).reshape(n, 2, 2, 64), 4, 64)
        qh = _low_bits(codes >> 4, 2, 32)
        return np.concatenate([ql, qh, np.asarray(sc).astype(np.int8).view(np.uint8), _f16(d)], axis=1)
    raise ValueError(kind)


def quantize(kind: str, x: np.ndarray) -> np.ndarray:
    """Float rows (..., K), K a multiple of 256 -> the type's blocks (..., K / 256 * bytes) by min/max."""
    lead = x.shape[:-1]
    blocks = x.reshape(-1, QK // SUB[kind], SUB[kind]).astype(np.float32)  # (n, subs, sub)
    n, top = blocks.shape[0], LEVELS[kind] - 1
    if kind in ("Q3_K", "Q6_K"):  # symmetric: q in [-L/2, L/2) times a signed scale
        half = LEVELS[kind] // 2
        s = np.abs(blocks).max(-1) / half  # (n, subs)
        d = s.max(-1) / (31 if kind == "Q3_K" else 127)  # (n,)
        d16 = d.astype(np.float16).astype(np.float32)
        sc = np.rint(np.divide(s, d16[:, None], out=np.zeros_like(s), where=d16[:, None] > 0))
        step = (d16[:, None] * sc)[..., None]
        q = np.rint(np.divide(blocks, step, out=np.zeros_like(blocks), where=step > 0)).clip(-half, half - 1)
        return pack(kind, (q + half).reshape(n, QK), sc, d).reshape(*lead, -1)
    lo = np.minimum(blocks.min(-1), 0)  # (n, subs): the min is subtracted, so it is stored as a positive m
    s = (blocks.max(-1) - lo) / top
    cap = 15 if kind == "Q2_K" else 63
    d, dmin = s.max(-1) / cap, (-lo).max(-1) / cap
    d16, dmin16 = (v.astype(np.float16).astype(np.float32) for v in (d, dmin))
    sc = np.rint(np.divide(s, d16[:, None], out=np.zeros_like(s), where=d16[:, None] > 0)).clip(0, cap)
    m = np.rint(np.divide(-lo, dmin16[:, None], out=np.zeros_like(lo), where=dmin16[:, None] > 0)).clip(0, cap)
    step, base = (d16[:, None] * sc)[..., None], (dmin16[:, None] * m)[..., None]
    q = np.rint(np.divide(blocks + base, step, out=np.zeros_like(blocks), where=step > 0)).clip(0, top)
    return pack(kind, q.reshape(n, QK), sc, d, m, dmin).reshape(*lead, -1)


def random_blocks(kind: str, rows: int, k: int, rng) -> np.ndarray:
    """Random codes and scales of the right layout (every bit pattern a real file may hold, negative Q3_K/Q6_K
    scales included), super-scales of realistic size: (rows, k / 256 * bytes) uint8."""
    n = rows * k // QK
    subs = QK // SUB[kind]
    codes = rng.integers(0, LEVELS[kind], (n, QK))
    d, dmin = rng.uniform(1e-4, 2e-3, n), rng.uniform(1e-4, 2e-3, n)
    if kind == "Q3_K":
        sc = rng.integers(-32, 32, (n, subs))
    elif kind == "Q6_K":
        sc = rng.integers(-128, 128, (n, subs))
    else:
        cap = 16 if kind == "Q2_K" else 64
        sc, m = rng.integers(0, cap, (n, subs)), rng.integers(0, cap, (n, subs))
        return pack(kind, codes, sc, d, m, dmin).reshape(rows, -1)
    return pack(kind, codes, sc, d).reshape(rows, -1)
