"""Q5_0, Q5_1 and the K-quants (Q2_K-Q6_K) from GGUF files written with the `gguf` package: our MLX weights against
the package's reference dequantization (exact for Q5_0/Q5_1, within float16 rounding of the scales for Q4_K/Q5_K,
within the documented requantization error for Q2_K/Q3_K/Q6_K), streaming in row chunks, a tiny Llama in a
Q4_K_M-style mix against transformers, and the types we do not read refused in one line."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlxmodels
from mlxmodels.formats import gguf_kquant, gguf_quant
from mlxmodels.formats.gguf import GGUFError, GGUFFile
from tests.formats import gguf_kblocks as kb
from tests.formats.test_gguf import NAMES, llama_cpp_permute, write
from tests.oracle import build_hf, hf_logits

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
KQUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def blocks(x: np.ndarray, qtype) -> np.ndarray:
    """Float rows -> the type's blocks: the gguf package where it quantizes the type, else tests' K-quantizer."""
    return kb.quantize(qtype.name, x) if qtype.name in KQUANTS else gguf.quants.quantize(x.astype(np.float32), qtype)


def weights(rng, shape):
    a = rng.standard_normal(shape).astype(np.float32)
    a[:, ::97] *= 8  # outliers: wide groups
    a[3] = 0.0  # an all-zero row: zero scales
    return a


def mlx_values(parts: dict, qtype) -> np.ndarray:
    """Our weight as MLX dequantizes it, in float32."""
    scales, biases = (mx.array(parts[k]).astype(mx.float32) for k in ("scales", "biases"))
    return np.array(mx.dequantize(mx.array(parts["weight"]), scales, biases, group_size=32,
                                  bits=gguf_quant.bits(qtype)))


def read(tmp_path, data, qtype):
    g = GGUFFile(write(tmp_path / "t.gguf", {"t.weight": (data, qtype)}))
    raw = g.raw("t.weight")
    g.close()
    return raw, gguf.quants.dequantize(raw, qtype).astype(np.float32)


@pytest.mark.parametrize("kind", KQUANTS)
def test_test_blocks_follow_ggml_layout(kind):
    """The K-quant packer builds what gguf's dequantize reads: value = d*sc*q - dmin*m (Q2/4/5_K) or d*sc*q."""
    rng = np.random.default_rng(3)
    n, subs = 4, kb.QK // kb.SUB[kind]
    codes = rng.integers(0, kb.LEVELS[kind], (n, kb.QK))
    d, dmin = rng.uniform(1e-3, 1, n).astype(np.float16), rng.uniform(1e-3, 1, n).astype(np.float16)
    if kind in ("Q3_K", "Q6_K"):
        sc = rng.integers(-32, 32, (n, subs)) if kind == "Q3_K" else rng.integers(-128, 128, (n, subs))
        want = d[:, None, None].astype(np.float32) * sc[..., None] * (codes.reshape(n, subs, -1) - kb.LEVELS[kind] // 2)
        got = gguf.quants.dequantize(kb.pack(kind, codes, sc, d), Q[kind])
    else:
        cap = 16 if kind == "Q2_K" else 64
        sc, m = rng.integers(0, cap, (n, subs)), rng.integers(0, cap, (n, subs))
        want = (d[:, None, None].astype(np.float32) * sc[..., None] * codes.reshape(n, subs, -1)
                - dmin[:, None, None].astype(np.float32) * m[..., None])
        got = gguf.quants.dequantize(kb.pack(kind, codes, sc, d, m, dmin), Q[kind])
    assert np.allclose(got, want.reshape(n, -1), rtol=1e-6, atol=0)


@pytest.mark.parametrize("qtype", [Q.Q5_0, Q.Q5_1])
def test_q5_0_q5_1_are_exact(tmp_path, qtype):
    raw, want = read(tmp_path, blocks(weights(np.random.default_rng(int(qtype)), (48, 96)), qtype), qtype)
    parts = gguf_quant.to_mlx(raw, int(qtype))
    assert parts["weight"].shape == (48, 96 * 5 // 32) and parts["scales"].dtype == np.float16
    assert np.array_equal(mlx_values(parts, qtype), want)


@pytest.mark.parametrize("kind", ["Q4_K", "Q5_K"])
@pytest.mark.parametrize("source", ["quantized", "random"])
def test_q4_k_q5_k_keep_their_codes(tmp_path, kind, source):
    """Each group of 32 is affine already: only the float16 rounding of d*sc and dmin*m moves a weight, by at most
    2^-11 (|scale*q| + |bias|) <= 2^-11 (|w| + 2|bias|); measured 1-2% of the type's own RMS error."""
    rng = np.random.default_rng(7)
    x = weights(rng, (32, 512))
    data = kb.quantize(kind, x) if source == "quantized" else kb.random_blocks(kind, 32, 512, rng)
    raw, want = read(tmp_path, data, Q[kind])
    parts = gguf_quant.to_mlx(raw, int(Q[kind]))
    assert parts["weight"].shape == (32, 512 * gguf_quant.bits(Q[kind]) // 32)
    got = mlx_values(parts, Q[kind])
    bias = np.repeat(parts["biases"].astype(np.float32), 32, axis=-1)
    assert (np.abs(got - want) <= 2.0 ** -11 * (np.abs(want) + 2 * np.abs(bias)) + 1e-7).all()
    if source == "quantized":
        added, own = np.sqrt(((got - want) ** 2).mean()), np.sqrt(((want - x) ** 2).mean())
        assert added < 0.04 * own, added / own


@pytest.mark.parametrize("kind,added_at_most", [("Q2_K", 0.13), ("Q3_K", 0.2), ("Q6_K", 0.2)])
def test_requantized_types_within_documented_error(tmp_path, kind, added_at_most):
    """Sub-blocks of 16 are requantized by min/max per group of 32: every weight within half a step of its group
    (plus float16 rounding), and the error added is at most ~0.2 of the type's own, so the total error grows by
    under 2% (gguf_kquant's table)."""
    rng = np.random.default_rng(11)
    x = weights(rng, (64, 1024))
    raw, want = read(tmp_path, kb.quantize(kind, x), Q[kind])
    parts = gguf_quant.to_mlx(raw, int(Q[kind]))
    got = mlx_values(parts, Q[kind])
    step = np.repeat(parts["scales"].astype(np.float32), 32, axis=-1)
    assert (np.abs(got - want) <= 0.5 * step + 2.0 ** -10 * np.abs(want) + 1e-7).all()
    added, own = np.sqrt(((got - want) ** 2).mean()), np.sqrt(((want - x) ** 2).mean())
    assert added < added_at_most * own, added / own
    assert np.sqrt(((got - x) ** 2).mean()) < 1.02 * own
    random = kb.random_blocks(kind, 8, 512, rng)  # every code and negative scales
    want = gguf.quants.dequantize(random, Q[kind])
    parts = gguf_quant.to_mlx(random, int(Q[kind]))
    step = np.repeat(parts["scales"].astype(np.float32), 32, axis=-1)
    assert (np.abs(mlx_values(parts, Q[kind]) - want) <= 0.5 * step + 2.0 ** -10 * np.abs(want) + 1e-7).all()


@pytest.mark.parametrize("kind", ["Q5_1", "Q4_K", "Q6_K"])
def test_rows_stream_in_chunks(monkeypatch, kind):
    """A tensor converted a few rows at a time (experts' leading axis included) equals it converted at once."""
    rng = np.random.default_rng(5)
    data = blocks(weights(rng, (24, 512)), Q[kind]).reshape(2, 12, -1)  # (experts, rows, bytes)
    whole = gguf_quant.to_mlx(data, int(Q[kind]))
    monkeypatch.setattr(gguf_kquant, "CHUNK", 512 * 5)  # 5 rows of floats at a time
    chunked = gguf_quant.to_mlx(data, int(Q[kind]))
    for part in ("weight", "scales", "biases"):
        assert whole[part].shape[:2] == (2, 12) and np.array_equal(whole[part], chunked[part])


def test_scales_past_float16_stay_float32():
    """Q5_0's bias is -16d: past float16's range (|d| > 4094) scales and biases are float32, still exact."""
    data = gguf.quants.quantize(np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64), Q.Q5_0)  # two blocks
    data[0, 0:2] = np.array([3000.0], np.float16).view(np.uint8)  # bias -48000: float16 holds it
    assert gguf_quant.to_mlx(data, int(Q.Q5_0))["biases"].dtype == np.float16
    data[0, 22:24] = np.array([8192.0], np.float16).view(np.uint8)  # bias -131072: it does not
    parts = gguf_quant.to_mlx(data, int(Q.Q5_0))
    assert parts["scales"].dtype == parts["biases"].dtype == np.float32
    assert np.array_equal(mlx_values(parts, Q.Q5_0), gguf.quants.dequantize(data, Q.Q5_0))


TINY = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=259, max_position_embeddings=128, rope_theta=10000.0, rms_norm_eps=1e-5)
# Q4_K_M's recipe on layer 0 (Q4_K, Q6_K for attn_v and ffn_down), every other type on layer 1
TYPES = {"model.embed_tokens": Q.Q6_K, "lm_head": Q.Q4_K, "model.layers.0.self_attn.v_proj": Q.Q6_K,
         "model.layers.0.mlp.down_proj": Q.Q6_K, "model.layers.0": Q.Q4_K,
         "model.layers.1.self_attn.q_proj": Q.Q5_K, "model.layers.1.self_attn.k_proj": Q.Q3_K,
         "model.layers.1.self_attn.v_proj": Q.Q5_0, "model.layers.1.self_attn.o_proj": Q.Q5_1,
         "model.layers.1.mlp.gate_proj": Q.Q2_K, "model.layers.1.mlp.up_proj": Q.Q4_K,
         "model.layers.1.mlp.down_proj": Q.Q5_K}


def test_tiny_llama_in_k_quants(tmp_path):
    """Our logits are transformers' on the weights as gguf dequantizes them, up to what the requantization adds;
    the tolerance is relative to what the K-quants themselves do to the float model's logits (RMS over all
    logits): the weights' added error is <= 0.2 of their own (the table in gguf_kquant), so the logits' must be
    well under 0.3 of it, and against the float model ours are within 3% of the K-quant file's own error."""
    import torch

    hf = build_hf("llama", tmp_path / "hf", **TINY)
    ids = np.random.default_rng(0).integers(0, 259, (1, 24))
    float_logits = hf_logits(hf, ids)
    tensors, state = {}, {}
    for name, p in hf.state_dict().items():
        w, stem = p.numpy(), name.rsplit(".", 1)[0]
        qtype = next((t for prefix, t in TYPES.items() if stem.startswith(prefix)), Q.F32) if w.ndim == 2 else Q.F32
        heads = {"q_proj": TINY["num_attention_heads"], "k_proj": TINY["num_key_value_heads"]}.get(stem[-6:])
        w = llama_cpp_permute(w, heads) if heads else w
        parts = stem.split(".")
        gname = f"blk.{parts[2]}.{NAMES['.'.join(parts[3:])]}" if parts[:2] == ["model", "layers"] else NAMES[stem]
        data = w.astype(np.float32) if qtype == Q.F32 else blocks(w, qtype)
        tensors[gname + ".weight"] = (data, qtype)
        stored = gguf.quants.dequantize(data, qtype).astype(np.float32)
        if heads:  # transformers gets the stored values in its own row order
            stored = stored.reshape(heads, stored.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
        state[name] = torch.from_numpy(np.ascontiguousarray(stored))
    hf.load_state_dict(state)
    meta = {"llama.block_count": 2, "llama.context_length": 128, "llama.embedding_length": 256,
            "llama.feed_forward_length": 512, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
            "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.freq_base": 10000.0,
            "llama.rope.dimension_count": 64, "llama.vocab_size": 259}
    model, _ = mlxmodels.load(write(tmp_path / "tiny.gguf", tensors, metadata=meta))
    layers = model.model.layers
    assert (layers[0].self_attn.q_proj.bits, layers[0].self_attn.v_proj.bits, layers[0].mlp.down_proj.bits,
            layers[1].mlp.gate_proj.bits, layers[1].self_attn.o_proj.bits, model.model.embed_tokens.bits,
            model.lm_head.bits) == (4, 8, 8, 5, 5, 8, 4)
    got = np.array(model(mx.array(ids)).astype(mx.float32))
    dequantized = hf_logits(hf, ids)

    def rms(a):
        return float(np.sqrt((a ** 2).mean()))

    own = rms(dequantized - float_logits)
    assert own > 0.01  # the K-quants do change the logits: the comparison below has a scale
    assert rms(got - dequantized) < 0.3 * own, (rms(got - dequantized), own)
    assert rms(got - float_logits) < 1.03 * own, (rms(got - float_logits), own)


@pytest.mark.parametrize("qtype", [Q.IQ2_XS, Q.IQ4_NL, Q.TQ1_0, Q.Q8_K])
def test_other_types_refused_in_one_line(tmp_path, qtype):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    data = np.zeros((4, 256 // block * size), np.uint8)
    path = write(tmp_path / "iq.gguf", {"token_embd.weight": (data, qtype)}, metadata={"llama.block_count": 1})
    with pytest.raises(GGUFError) as e:
        mlxmodels.load(path)
    message = str(e.value)
    assert "\n" not in message and "'token_embd.weight'" in message and f"is {qtype.name}," in message
    assert "Q2_K-Q6_K" in message
