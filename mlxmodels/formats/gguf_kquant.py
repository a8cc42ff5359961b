"""GGUF's 5-bit and K-quant types -> MLX's affine layout (w = scale * q + bias, groups of 32 along a row), read a
chunk of rows at a time: the `gguf` package dequantizes the blocks (its reference code, llama.cpp's layouts) to
float32, and the values are re-expressed at the width in RECIPES. Only one chunk (CHUNK floats) is ever in float.

Where a group of 32 of the type is already affine, its codes are kept (no requantization, "lattice"):

    Q5_0  w = d * (q - 16)            -> 5 bits, scale d, bias -16d     exact (as Q4_0)
    Q5_1  w = d * q + m               -> 5 bits, scale d, bias m        exact
    Q4_K  w = (d*sc) * q - dmin*m     -> 4 bits, scale d*sc, bias -dmin*m, per sub-block of 32
    Q5_K  likewise, q in 0..31        -> 5 bits

MLX keeps scales and biases in float16, like the file's own d and m, so d*sc (up to 17 significant bits) and dmin*m
are rounded to nearest: each weight moves by at most 2^-11 of |scale*q| + |bias| (tests/formats/test_gguf_types.py
holds the bound); measured, that is 1% of Q4_K's own RMS rounding error and 2% of Q5_K's, so the total error grows
by 0.005% and 0.02%. Where a value overflows float16 both are float32 and the lattice types stay exact.

Q2_K, Q3_K and Q6_K scale sub-blocks of 16, which MLX's smallest group (32) cannot follow, so their dequantized
values are requantized by min/max per group of 32. Measured on Gaussian weights with outliers quantized to each
type (RMS error added by us / the type's own RMS error against the original floats; in brackets the total error
increase and MLX bits per weight with float16 scale and bias):

    Q6_K  6 bits 0.73 (+24%, 7)    8 bits 0.18 (+1.6%, 9)   <- chosen; 8 bits group 64: 0.24 (+2.9%)
    Q3_K  4 bits 0.35 (+6.4%, 5)   5 bits 0.18 (+1.5%, 6)   <- chosen; 8 bits: 0.02 (9)
    Q2_K  4 bits 0.21 (+2.4%, 5)   5 bits 0.12 (+0.3%, 6)   <- chosen

The rule: the fewest bits whose total error stays within 2% of the type's own. Per-layer widths differ (Q4_K_M is
Q4_K with Q6_K layers), which the config's `quantization` entry says per module as mlx-lm writes overrides.
"""

from __future__ import annotations

import numpy as np

# ggml type ids (gguf.GGMLQuantizationType)
Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = 6, 7, 10, 11, 12, 13, 14
GROUP = 32
RECIPES = {Q5_0: 5, Q5_1: 5, Q4_K: 4, Q5_K: 5, Q6_K: 8, Q3_K: 5, Q2_K: 5}  # type -> MLX bits at group 32
LATTICE = {Q5_0, Q5_1, Q4_K, Q5_K}
CHUNK = 1 << 22  # floats dequantized at once (16 MB)


def to_mlx(rows: np.ndarray, ggml_type: int) -> dict:
    """A tensor's blocks as uint8 rows (..., n, bytes per row) -> {"weight", "scales", "biases"} in MLX's layout."""
    from gguf.quants import dequantize

    lead, row_bytes = rows.shape[:-1], rows.shape[-1]
    flat = rows.reshape(-1, row_bytes)  # (N, bytes)
    k = flat.shape[1] // _block_bytes(ggml_type) * _block_size(ggml_type)
    step = max(1, CHUNK // max(k, 1))
    parts = []
    for start in range(0, flat.shape[0], step):
        chunk = flat[start:start + step]
        w = dequantize(chunk, ggml_type).astype(np.float32).reshape(-1, k // GROUP, GROUP)  # (n, groups, 32)
        if ggml_type in LATTICE:
            scale, bias = _lattice(chunk, ggml_type)
            parts.append(_codes(w, scale, bias, RECIPES[ggml_type]))
        else:
            parts.append(_minmax(w, RECIPES[ggml_type]))
    weight, scales, biases = (np.concatenate([p[i] for p in parts]) for i in range(3))
    if not (np.isfinite(scales).all() and np.isfinite(biases).all()) or max(
            np.abs(scales).max(initial=0), np.abs(biases).max(initial=0)) <= 65504:
        scales, biases = scales.astype(np.float16), biases.astype(np.float16)  # NaN stays NaN: load refuses it
    n = weight.shape[0]
    return {"weight": weight.reshape(*lead, n and -1), "scales": scales.reshape(*lead, n and -1),
            "biases": biases.reshape(*lead, n and -1)}


def _block_size(ggml_type: int) -> int:
    return 32 if ggml_type in (Q5_0, Q5_1) else 256


def _block_bytes(ggml_type: int) -> int:
    return {Q5_0: 22, Q5_1: 24, Q2_K: 84, Q3_K: 110, Q4_K: 144, Q5_K: 176, Q6_K: 210}[ggml_type]


def _f16(b: np.ndarray) -> np.ndarray:
    """Two bytes per entry (..., 2) -> their float16 value as float32 (...)."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _lattice(chunk: np.ndarray, ggml_type: int):
    """Each group's float32 scale and bias as the block header gives them: (n, groups) each."""
    n = chunk.shape[0]
    if ggml_type in (Q5_0, Q5_1):
        blocks = chunk.reshape(n, -1, _block_bytes(ggml_type))  # (n, blocks, bytes): a block is a group
        d = _f16(blocks[..., 0:2])
        return d, (_f16(blocks[..., 2:4]) if ggml_type == Q5_1 else -16 * d)
    from gguf.quants import Q4_K as K4

    blocks = chunk.reshape(-1, 144 if ggml_type == Q4_K else 176)  # (n * blocks, bytes)
    d, dmin = _f16(blocks[:, 0:2])[:, None], _f16(blocks[:, 2:4])[:, None]
    sc, m = K4.get_scale_min(blocks[:, 4:16])  # (n * blocks, 8) six-bit sub-block scales and mins
    return (d * sc.astype(np.float32)).reshape(n, -1), (-dmin * m.astype(np.float32)).reshape(n, -1)


def _codes(w: np.ndarray, scale: np.ndarray, bias: np.ndarray, bits: int):
    """Recover each weight's integer code from its value: w = scale*q + bias exactly up to float32 rounding, so
    q = rint((w - bias) / scale); a zero scale makes every code 0."""
    with np.errstate(all="ignore"):  # NaN/inf scales (a damaged file) give NaN weights, which load refuses
        q = np.rint((w - bias[..., None]) / scale[..., None])
    q = np.where(scale[..., None] != 0, q, 0)
    return _pack(np.nan_to_num(q).clip(0, (1 << bits) - 1), bits), scale, bias


def _minmax(w: np.ndarray, bits: int):
    """Affine requantization per group: scale (max - min) / (2^bits - 1), bias min, both rounded to float16 first
    (where float16 holds them) so the codes are chosen against the values MLX will use."""
    lo, hi = w.min(-1), w.max(-1)  # (n, groups)
    scale, bias = _half((hi - lo) / ((1 << bits) - 1)), _half(lo)
    with np.errstate(all="ignore"):
        q = np.rint((w - bias[..., None]) / scale[..., None])
    q = np.where(scale[..., None] > 0, q, 0)
    return _pack(np.nan_to_num(q).clip(0, (1 << bits) - 1), bits), scale, bias


def _half(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        narrow = x.astype(np.float16).astype(np.float32)
    return np.where(np.isfinite(narrow) | ~np.isfinite(x), narrow, x)


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Codes (n, groups, 32) -> uint32 words (n, K * bits / 32): code j of a row at bits [j*bits, (j+1)*bits) of
    the row's little-endian byte stream."""
    n = q.shape[0]
    stream = np.unpackbits(q.astype(np.uint8)[..., None], axis=-1, bitorder="little")[..., :bits]  # (n, g, 32, b)
    return np.packbits(stream.reshape(n, -1), axis=-1, bitorder="little").view(np.uint32).reshape(n, -1)
