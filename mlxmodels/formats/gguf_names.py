"""llama.cpp tensor names -> the Hugging Face names our modules carry, one table per GGUF architecture, and what
convert_hf_to_gguf.py did to a tensor that must be undone.

- Q/K row permutation (LlamaModel and its subclasses that keep `undo_permute`: llama, smollm3; not llama4, qwen*,
  gemma*, olmo2, deepseek2, whose llama.cpp RoPE is the NeoX or the interleaved kind the HF weights already use):
  llama.cpp's RoPE rotates adjacent pairs, Hugging Face's the two halves of each head, so within each head rows
  [0, h/2) and [h/2, h) were interleaved, and so were the Q/K biases of a model with attention_bias.
  `unpermute_rows` gives the row order that undoes it. Rows are whole
  (quantization blocks run along a row), so taking rows of the packed weight, its scales and its biases undoes it
  exactly on quantized tensors too.
- Gemma 2/3 norms (every `*norm.weight`): llama.cpp stores 1 + w, our (1 + w) RMSNorm wants w: `UNIT_OFFSET`.
- Experts (Mixtral in `llama`, qwen3moe, deepseek2, llama4): stacked (E, out, in) as `ffn_{gate,up,down}_exps`, the
  layout our SwitchMLP holds, under the adapter's MoE module names.
- Fused experts `ffn_gate_up_exps` (E, 2 * ff, hidden), gate rows first, which convert writes with
  --fuse-gate-up-exps; of our architectures only deepseek2's llama.cpp loader reads them (llama, qwen3moe and llama4
  files cannot have them): `GATE_UP`, split in halves along the rows (whole rows, so exact on quantized tensors).
- DeepSeek-V2/V3 `attn_kv_b` (older files) is our adapter's kv_b_proj (split by it); newer files store the halves
  instead, `attn_k_b` (H, kv_lora, nope) and `attn_v_b` (H, v, kv_lora), which are exactly our embed_q and
  unembed_out; a file with both has kv_b skipped.
- DeepSeek-V3's MTP modules (llama.cpp's NextN): the last `nextn_predict_layers` blocks of `block_count` are
  decoder blocks like the others plus `blk.N.nextn.*` (eh_proj, enorm, hnorm, shared_head_norm), our MTPBlock's
  names at `model.layers.N`; their `nextn.embed_tokens` and `nextn.shared_head_head` are copies of the main model's
  embedding and head, skipped as our folder loader drops them.
- GPT-2's fused `attn_qkv` is (3 * hidden, hidden) as (out, in) already (convert transposed the Conv1D), which the
  gpt2 adapter splits under its mlx-lm name c_attn; its `output` is a copy of the embedding (the head is tied).
"""

from __future__ import annotations

import re

import numpy as np

UNIT_OFFSET = "unit_offset"  # the stored norm is 1 + w
SKIP = "skip"  # known to llama.cpp, not read (a copy of another tensor)
GATE_UP = "gate_up"  # fused experts: the first half of the rows is gate_proj, the second up_proj

_ATTN = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
         "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
_PRE = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
_POST = {"post_attention_norm": "post_attention_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}


def _dense(module: str) -> dict:
    return {f"ffn_{p}": f"{module}.{p}_proj" for p in ("gate", "up", "down")}


def _experts(module: str, experts: str = "switch_mlp", router: str = "gate", shared: str = None) -> dict:
    out = {f"ffn_{p}_exps": f"{module}.{experts}.{p}_proj" for p in ("gate", "up", "down")}
    out["ffn_gate_inp"] = f"{module}.{router}"
    if shared:
        out.update({f"ffn_{p}_shexp": f"{module}.{shared}.{p}_proj" for p in ("gate", "up", "down")})
    return out


_MLA = {"attn_q_a": "self_attn.q_a_proj", "attn_q_a_norm": "self_attn.q_a_layernorm", "attn_q_b": "self_attn.q_b_proj",
        "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa", "attn_kv_a_norm": "self_attn.kv_a_layernorm",
        "attn_kv_b": "self_attn.kv_b_proj", "attn_k_b": "self_attn.embed_q", "attn_v_b": "self_attn.unembed_out",
        "exp_probs_b": "mlp.gate.e_score_correction"}  # + ".bias": transformers' e_score_correction_bias
_NEXTN = {"nextn.eh_proj": "eh_proj", "nextn.enorm": "enorm", "nextn.hnorm": "hnorm",
          "nextn.shared_head_norm": "shared_head.norm", "nextn.embed_tokens": SKIP, "nextn.shared_head_head": SKIP}
_MODEL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
          "rope_freqs": SKIP}  # Llama 3.1 scaling: read into the config by gguf_rope, not a weight
_LLAMA = {**_ATTN, **_PRE, **_dense("mlp")}
_PERMUTED = {"attn_q": "num_attention_heads", "attn_k": "num_key_value_heads"}

# architecture -> (top-level names, per-layer names, GGUF layer keys whose rows llama.cpp permuted)
TABLES = {
    # Mixtral is `llama` with experts: our mixtral adapter's block_sparse_moe
    "llama": (_MODEL, {**_LLAMA, **_experts("block_sparse_moe")}, _PERMUTED),
    "smollm3": (_MODEL, _LLAMA, _PERMUTED),
    "qwen2": (_MODEL, _LLAMA, {}),
    "qwen3": (_MODEL, _LLAMA, {}),
    "qwen3moe": (_MODEL, {**_LLAMA, **_experts("mlp")}, {}),
    "gemma2": (_MODEL, {**_ATTN, **_POST, **_dense("mlp"), "attn_norm": "input_layernorm",
                        "ffn_norm": "pre_feedforward_layernorm"}, {}),
    "olmo2": (_MODEL, {**_ATTN, **_POST, **_dense("mlp")}, {}),
    "deepseek2": (_MODEL, {**_ATTN, **_PRE, **_dense("mlp"), **_experts("mlp", shared="shared_experts"), **_MLA,
                           **_NEXTN, "ffn_gate_up_exps": "mlp.switch_mlp.gate_up_proj"}, {}),
    "gpt2": ({"token_embd": "model.embed_tokens", "position_embd": "model.embed_positions", "output_norm": "model.norm",
              "output": SKIP},
             {"attn_norm": "input_layernorm", "attn_qkv": "self_attn.c_attn", "attn_output": "self_attn.o_proj",
              "ffn_norm": "post_attention_layernorm", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}, {}),
    "llama4": (_MODEL, {**_ATTN, **_PRE, **_dense("feed_forward"),
                        **_experts("feed_forward", "experts", "router", "shared_expert")}, {}),
}
TABLES["gemma3"] = TABLES["gemma2"]
UNIT_OFFSET_ARCHS = ("gemma2", "gemma3")

_BLOCK = re.compile(r"blk\.(\d+)\.((?:nextn\.)?[a-z0-9_]+)\.(weight|bias)")
_TOP = re.compile(r"([a-z0-9_]+)\.(weight|bias)")


def hf_name(arch: str, name: str, names=()):
    """(Hugging Face name, how to undo llama.cpp's transform: None, UNIT_OFFSET, GATE_UP or the config key giving the
    head count of rows to un-permute), SKIP for a tensor not read, or None when the name is not in the architecture's
    table. `names`: every tensor name of the file (a DeepSeek kv_b is skipped where its halves are stored)."""
    top, layer, permuted = TABLES[arch]
    m = _BLOCK.fullmatch(name)
    if m:
        index, key, kind = m.groups()
        if key not in layer or len(index) >= 7:
            return None
        if layer[key] == SKIP or key == "attn_kv_b" and f"blk.{index}.attn_k_b.weight" in names:
            return SKIP
        undo = GATE_UP if key == "ffn_gate_up_exps" else permuted.get(key)
        if arch in UNIT_OFFSET_ARCHS and key.endswith("norm"):
            undo = UNIT_OFFSET
        return f"model.layers.{int(index)}.{layer[key]}{'_' if key == 'exp_probs_b' else '.'}{kind}", undo
    m = _TOP.fullmatch(name)
    if m and m.group(1) in top:
        if top[m.group(1)] == SKIP:
            return SKIP
        undo = UNIT_OFFSET if arch in UNIT_OFFSET_ARCHS and m.group(1).endswith("norm") else None
        return f"{top[m.group(1)]}.{m.group(2)}", undo
    return None


def unpermute_rows(rows: int, heads: int) -> np.ndarray:
    """Indices that put llama.cpp's permuted Q/K rows back in Hugging Face order: hf = gguf[index]."""
    half = rows // heads // 2
    # llama.cpp: hf.reshape(heads, 2, half, ...).swapaxes(1, 2) -> gguf, so gguf row (h, i, j) is hf row (h, j, i)
    return np.arange(rows).reshape(heads, half, 2).swapaxes(1, 2).reshape(-1)


def without_unit_offset(weight: np.ndarray, bfloat16: bool) -> np.ndarray:
    """A stored 1 + w norm (float32/float16, or bfloat16 bits as uint16) -> w in float32, as transformers' GGUF
    loader computes it (dequantize to float32, subtract 1)."""
    if bfloat16:
        weight = (weight.astype(np.uint32) << 16).view(np.float32)
    return weight.astype(np.float32) - np.float32(1)


def outputs(hf: str, undo) -> list:
    """The Hugging Face names one GGUF tensor becomes: its own, or gate_proj and up_proj for a fused GATE_UP."""
    if undo == GATE_UP:
        return [hf.replace("gate_up_proj", "gate_proj"), hf.replace("gate_up_proj", "up_proj")]
    return [hf]
