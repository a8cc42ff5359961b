"""llama.cpp tensor names -> the Hugging Face names our modules carry, one table per GGUF architecture, and the
row permutations llama.cpp applied that must be undone.

llama.cpp's convert_hf_to_gguf.py permutes the rows of a Llama-style model's Q and K projections (its RoPE rotates
adjacent pairs, Hugging Face's the two halves of each head): within each head, rows [0, h/2) and [h/2, h) are
interleaved. `unpermute_rows` gives the row order that undoes it. Rows are whole (quantization blocks run along a
row), so taking rows of the packed weight, its scales and its biases undoes it exactly on quantized tensors too.
"""

from __future__ import annotations

import re

import numpy as np

_LAYER = {  # blk.N.<key>.weight -> model.layers.N.<value>.weight
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_MODEL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# architecture -> (top-level names, per-layer names, GGUF layer keys whose rows llama.cpp permuted)
TABLES = {"llama": (_MODEL, _LAYER, {"attn_q": "num_attention_heads", "attn_k": "num_key_value_heads"})}

_BLOCK = re.compile(r"blk\.(\d+)\.([a-z0-9_]+)\.(weight|bias)")
_TOP = re.compile(r"([a-z0-9_]+)\.(weight|bias)")


def hf_name(arch: str, name: str):
    """(Hugging Face name, the config key giving the head count if its rows must be un-permuted) or None when the
    name is not in the architecture's table."""
    top, layer, permuted = TABLES[arch]
    m = _BLOCK.fullmatch(name)
    if m:
        index, key, kind = m.groups()
        if key in layer and len(index) < 7:
            return f"model.layers.{int(index)}.{layer[key]}.{kind}", permuted.get(key)
        return None
    m = _TOP.fullmatch(name)
    if m and m.group(1) in top:
        return f"{top[m.group(1)]}.{m.group(2)}", None
    return None


def unpermute_rows(rows: int, heads: int) -> np.ndarray:
    """Indices that put llama.cpp's permuted Q/K rows back in Hugging Face order: hf = gguf[index]."""
    half = rows // heads // 2
    # llama.cpp: hf.reshape(heads, 2, half, ...).swapaxes(1, 2) -> gguf, so gguf row (h, i, j) is hf row (h, j, i)
    return np.arange(rows).reshape(heads, half, 2).swapaxes(1, 2).reshape(-1)
