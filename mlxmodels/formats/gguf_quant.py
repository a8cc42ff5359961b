"""GGUF tensor bytes -> MLX arrays: float types as they are; Q8_0, Q4_0 and Q4_1 moved into MLX's affine layout
with no loss (no requantization); Q5_0, Q5_1 and the K-quants through gguf_kquant (dequantized a chunk of rows at a
time and re-expressed at the width its RECIPES give).

Both formats store blocks of 32 weights along a row with a scale, so a GGUF block is exactly an MLX group of 32:
MLX computes w = scale * q + bias with q unsigned and packed LSB-first into uint32 words (element j of a row at bits
[j*bits, (j+1)*bits) of its little-endian byte stream). Per block (llama.cpp's ggml-common.h):

    Q4_0: d (f16), 16 bytes of nibbles; w = d * (q - 8)        -> scale d, bias -8d, q as is
    Q4_1: d, m (f16), 16 bytes of nibbles; w = d * q + m         -> scale d, bias m, q as is
    Q8_0: d (f16), 32 signed bytes; w = d * q                    -> scale d, bias -128d, q + 128 (unsigned)

ggml keeps elements 0-15 of a block in the low nibbles of its 16 bytes and 16-31 in the high ones; MLX wants
elements 2k and 2k+1 in byte k, so the nibbles are reordered. Every product d*q has at most 19 significant bits and
-8d, -128d are exact, so MLX's scale*q + bias gives the same float32 value as ggml's formula (bit for bit, except
that ggml's zero is -0.0 where d < 0; tests/formats/test_gguf.py checks against the `gguf` package's dequantize).
"""

from __future__ import annotations

import numpy as np

from . import gguf_kquant

# ggml type ids (gguf.GGMLQuantizationType)
F32, F16, Q4_0, Q4_1, Q8_0, BF16 = 0, 1, 2, 3, 8, 30
FLOATS = {F32: np.float32, F16: np.float16, BF16: np.uint16}  # BF16: the bits, viewed as bfloat16 in MLX
BITS = {Q4_0: 4, Q4_1: 4, Q8_0: 8}  # kept quantized at this width, group size 32
GROUP = 32


READABLE = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants Q2_K-Q6_K"


def bits(ggml_type: int):
    """The MLX width a quantized type keeps or is requantized to (None for float types), always at group 32."""
    return BITS.get(ggml_type) or gguf_kquant.RECIPES.get(ggml_type)


def readable(ggml_type: int) -> bool:
    return ggml_type in FLOATS or bits(ggml_type) is not None


def to_mlx(rows: np.ndarray, ggml_type: int) -> dict:
    """A tensor's bytes as uint8 rows (..., rows, bytes per row) -> {"weight"[, "scales", "biases"]: NumPy array}.
    Scales and biases are float16 (GGUF's own type) unless a bias does not fit float16 (|d| > 8188 for Q4_0):
    then both are float32, still exact."""
    if ggml_type in FLOATS:
        return {"weight": np.ascontiguousarray(rows).view(FLOATS[ggml_type])}
    if ggml_type in gguf_kquant.RECIPES:
        return gguf_kquant.to_mlx(rows, ggml_type)
    lead, row_bytes = rows.shape[:-1], rows.shape[-1]
    block_bytes = {Q4_0: 18, Q4_1: 20, Q8_0: 34}[ggml_type]
    blocks = rows.reshape(*lead, row_bytes // block_bytes, block_bytes)  # (..., n, blocks, block bytes)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)  # (..., n, blocks)
    if ggml_type == Q8_0:
        q = blocks[..., 2:34] ^ np.uint8(0x80)  # int8 two's complement + 128 = flip the sign bit: (..., blocks, 32)
        bias = -128 * d
    else:
        nibbles = blocks[..., 4:20] if ggml_type == Q4_1 else blocks[..., 2:18]  # (..., n, blocks, 16)
        q = np.concatenate([nibbles & 15, nibbles >> 4], axis=-1)  # elements 0-15 then 16-31: (..., blocks, 32)
        q = q[..., 0::2] | (q[..., 1::2] << 4)  # byte k holds elements 2k (low) and 2k+1 (high): (..., blocks, 16)
        bias = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32) if ggml_type == Q4_1 else -8 * d
    weight = np.ascontiguousarray(q).reshape(*lead, -1).view(np.uint32)  # (..., n, K * bits / 32)
    with np.errstate(over="ignore"):  # an overflow is the case checked next
        narrow = bias.astype(np.float16)
    if np.array_equal(narrow.astype(np.float32), bias, equal_nan=True):
        return {"weight": weight, "scales": d.astype(np.float16), "biases": narrow}
    return {"weight": weight, "scales": d, "biases": bias}
