"""Our GGUF reader on files written by the `gguf` package's own writer: Q4_0, Q4_1 and Q8_0 land in MLX's affine
layout bit-exactly (against the package's reference dequantization), float types unchanged, and a tiny random Llama
exported as llama.cpp exports it (Q/K rows permuted, mixed quantized types, own head) loads with transformers'
logits. No network needed: the real model is in test_gguf_smollm2.py."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlxmodels
from mlxmodels.formats import gguf_quant
from mlxmodels.formats.gguf import GGUFFile
from tests.oracle import TINY_LLAMA, build_hf, hf_logits

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType


def write(path, tensors: dict, arch: str = "llama", metadata: dict = None):
    """A GGUF file holding `tensors` (name -> (float32 array, ggml type)), quantized with the gguf package (an
    array of uint8 is taken as the type's blocks already)."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in (metadata or {}).items():
        adders = {int: w.add_uint32, float: w.add_float32, str: w.add_string, bool: w.add_bool}
        adders[type(value)](key, value)
    for name, (array, qtype) in tensors.items():
        data = array if array.dtype == np.uint8 else gguf.quants.quantize(array.astype(np.float32), qtype)
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def weights(rng, shape):
    a = rng.standard_normal(shape).astype(np.float32)
    a[:, ::7] *= 30  # outliers: wide scales, negative minima
    a[3] = 0.0  # an all-zero block: scale 0
    return a


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0])
def test_quantized_types_are_exact(tmp_path, qtype):
    a = weights(np.random.default_rng(int(qtype)), (48, 96))
    g = GGUFFile(write(tmp_path / "q.gguf", {"t.weight": (a, qtype)}))
    info = g.tensors["t.weight"]
    assert info.shape == (96, 48) and info.type_name == qtype.name
    raw = g.raw("t.weight")
    want = gguf.quants.dequantize(raw, qtype).astype(np.float32)  # (48, 96)
    parts = gguf_quant.to_mlx(raw, int(qtype))
    assert parts["weight"].dtype == np.uint32 and parts["weight"].shape == (48, 96 * gguf_quant.bits(qtype) // 32)
    assert parts["scales"].shape == parts["biases"].shape == (48, 3)
    got = mx.dequantize(mx.array(parts["weight"]), mx.array(parts["scales"]).astype(mx.float32),
                        mx.array(parts["biases"]).astype(mx.float32), group_size=32, bits=gguf_quant.bits(qtype))
    # equal values (ggml's d * 0 is -0.0 where d < 0, MLX's scale * q + bias gives +0.0: the same number)
    assert np.array_equal(np.array(got), want) and np.isfinite(want).all()
    g.close()


def test_q4_0_bias_past_float16_stays_exact():
    """-8d overflows float16 when |d| > 8188: scales and biases are then float32, still exact."""
    a = np.zeros((1, 32), np.float32)
    a[0, 0] = -65536.0  # d = max / -8 = 8192, and -8d = -65536 is past float16's 65504
    data = gguf.quants.quantize(a, Q.Q4_0)
    parts = gguf_quant.to_mlx(data, int(Q.Q4_0))
    assert parts["biases"].dtype == np.float32
    got = mx.dequantize(mx.array(parts["weight"]), mx.array(parts["scales"]), mx.array(parts["biases"]),
                        group_size=32, bits=4)
    assert np.array_equal(np.array(got), gguf.quants.dequantize(data, Q.Q4_0))


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16])
def test_float_types_unchanged(tmp_path, qtype):
    a = weights(np.random.default_rng(1), (4, 64))
    g = GGUFFile(write(tmp_path / "f.gguf", {"t.weight": (a, qtype)}))
    raw = g.raw("t.weight")
    got = mx.array(gguf_quant.to_mlx(raw, int(qtype))["weight"])
    got = got.view(mx.bfloat16) if qtype == Q.BF16 else got
    assert np.array_equal(np.array(got.astype(mx.float32)), gguf.quants.dequantize(raw, qtype).astype(np.float32))
    g.close()


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, applied to Q (heads) and K (kv heads)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# Hugging Face name -> GGUF name, for the tiny Llama
NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
         "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
         "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def test_tiny_llama_matches_transformers(tmp_path):
    """Layer 0 in Q8_0, layer 1 in Q4_0, the untied head in Q4_1, the embedding F16: our logits equal transformers'
    on the same weights as GGUF dequantizes them, after the Q/K permutation is undone."""
    import torch

    cfg = dict(TINY_LLAMA, rope_theta=5000.0, rms_norm_eps=1e-5)
    hf = build_hf("llama", tmp_path / "hf", **cfg)
    types = {"model.layers.0": Q.Q8_0, "model.layers.1": Q.Q4_0, "lm_head": Q.Q4_1, "model.embed_tokens": Q.F16}
    tensors = {}
    state = {}
    for name, p in hf.state_dict().items():
        w = p.numpy()
        stem = name.rsplit(".", 1)[0]
        qtype = next((t for prefix, t in types.items() if stem.startswith(prefix)), Q.F32) if w.ndim == 2 else Q.F32
        heads = {"q_proj": cfg["num_attention_heads"], "k_proj": cfg["num_key_value_heads"]}.get(stem[-6:])
        if heads:
            w = llama_cpp_permute(w, heads)
        parts = stem.split(".")
        layer = parts[:2] == ["model", "layers"]
        tensors[(f"blk.{parts[2]}.{NAMES['.'.join(parts[3:])]}" if layer else NAMES[stem]) + ".weight"] = (w, qtype)
        stored = gguf.quants.dequantize(gguf.quants.quantize(w.astype(np.float32), qtype), qtype).astype(np.float32)
        if heads:  # transformers gets the stored values in its own row order
            n = stored.shape[0]
            stored = stored.reshape(heads, n // heads // 2, 2, -1).swapaxes(1, 2).reshape(stored.shape)
        state[name] = torch.from_numpy(np.ascontiguousarray(stored))
    hf.load_state_dict(state)
    meta = {"llama.block_count": 2, "llama.context_length": 128, "llama.embedding_length": 64,
            "llama.feed_forward_length": 128, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
            "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.freq_base": 5000.0,
            "llama.rope.dimension_count": 16, "llama.vocab_size": 259}
    path = write(tmp_path / "tiny.gguf", tensors, metadata=meta)
    model, tokenizer = mlxmodels.load(path)
    assert tokenizer is None  # the file has no tokenizer metadata
    assert not model.spec.tie_embeddings
    assert (model.model.layers[0].mlp.up_proj.bits, model.model.layers[1].mlp.up_proj.bits, model.lm_head.bits) \
        == (8, 4, 4)
    ids = np.random.default_rng(0).integers(0, 259, (1, 24))
    got = np.array(model(mx.array(ids)).astype(mx.float32))
    want = hf_logits(hf, ids)
    assert np.abs(got - want).max() < 1e-4, np.abs(got - want).max()
