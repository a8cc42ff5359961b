"""Llama 3.1-style RoPE scaling from a GGUF file: llama.cpp bakes Hugging Face's `rope_scaling` {rope_type "llama3",
factor, low_freq_factor, high_freq_factor, original_max_position_embeddings} into a `rope_freqs` tensor (one factor
per rotated pair: the frequency is divided by it) and keeps none of the four numbers in the metadata. This gives the
rope_scaling back, so the model computes its frequencies as transformers does from the Hub config.

convert_hf_to_gguf.py (LlamaModel.generate_extra_tensors) writes, per pair i of `dims` rotated dimensions with
wavelength 2*pi*theta^(2i/dims): 1 below original/high, `factor` above original/low, and between them
1 / ((1 - s) / factor + s) with s = (original / wavelength - low) / (high - low). Only the two boundaries and the
line s(1/wavelength) matter, so the tensor fixes the numbers up to one free choice; we try Llama 3.1/3.2's published
values first (low 1, high 4, original 8192, factor the largest entry; the metadata's factor and original context
where the file has them) and otherwise take low = 1 and solve the line for high and the original context. Either way
the result must reproduce every stored factor, or the file is refused: a tensor we cannot explain is not guessed at.
"""

from __future__ import annotations

import math

import numpy as np

from .gguf import GGUFError, GGUFFile

NAME = "rope_freqs.weight"
PUBLISHED = (1.0, 4.0, 8192)  # low_freq_factor, high_freq_factor, original_max_position_embeddings (Llama 3.1-3.3)


def factors(dims: int, theta: float, factor: float, low: float, high: float, original: int) -> np.ndarray:
    """The rope_freqs tensor convert_hf_to_gguf.py writes for this llama3 scaling: (dims / 2,) float32."""
    freqs = 1.0 / theta ** (np.arange(0, dims, 2, dtype=np.float32) / dims)
    out = []
    for freq in freqs.astype(np.float64):
        wavelen = 2 * math.pi / freq
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


def llama3_scaling(g: GGUFFile, arch: str, dims: int, theta: float):
    """The Hugging Face rope_scaling dict the file's rope_freqs tensor encodes, or None when every factor is 1."""
    info = g.tensors[NAME]
    if info.type_name != "F32" or info.shape != (dims // 2,):
        raise GGUFError(f"{g.path}: tensor {NAME!r} is {info.type_name} {list(info.rows_shape)}, not F32 [{dims // 2}] "
                        f"(one factor per pair of the {dims} rotated dimensions); the file is damaged, re-download it")
    stored = g.raw(NAME).view(np.float32).reshape(-1)
    if not (np.isfinite(stored).all() and (stored > 0).all()):
        raise GGUFError(f"{g.path}: tensor {NAME!r} holds factors that are not positive numbers; re-download it")
    if np.all(stored == 1):
        return None
    top = float(stored.max())
    factor = g.get(f"{arch}.rope.scaling.factor", float) or top
    original = g.get(f"{arch}.rope.scaling.original_context_length", int)
    candidates = [(factor, PUBLISHED[0], PUBLISHED[1], original or PUBLISHED[2])]
    candidates += _fitted(stored, dims, theta, factor)
    for factor, low, high, original in candidates:
        if np.allclose(factors(dims, theta, factor, low, high, original), stored, rtol=1e-5, atol=0):
            return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                    "original_max_position_embeddings": original}
    raise GGUFError(f"{g.path}: tensor {NAME!r} does not follow Llama 3's RoPE scaling (no factor, low/high frequency "
                    "factors and original context reproduce it), so mlxmodels cannot tell how to rotate; use the "
                    "model's Hugging Face folder instead")


def _fitted(stored: np.ndarray, dims: int, theta: float, factor: float) -> list:
    """With low = 1: s = original / (high - 1) / wavelength - 1 / (high - 1) is a line in 1 / wavelength through the
    pairs strictly between 1 and the factor; its two coefficients give high and the original context."""
    inv_wavelen = 1 / (2 * math.pi * theta ** (np.arange(0, dims, 2, dtype=np.float64) / dims))
    middle = (stored > 1 + 1e-6) & (stored < factor * (1 - 1e-6))
    if middle.sum() < 2 or factor <= 1:
        return []
    smooth = (1 / stored[middle].astype(np.float64) - 1 / factor) / (1 - 1 / factor)
    slope, intercept = np.polyfit(inv_wavelen[middle], smooth, 1)
    if intercept >= 0 or slope <= 0:
        return []
    high = 1 - 1 / intercept
    return [(factor, 1.0, round(float(high), 4), int(round(slope * (high - 1))))]
