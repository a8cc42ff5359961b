"""Llama 3.1-style RoPE scaling read back from a GGUF `rope_freqs` tensor. The tensor is made from transformers' own
llama3 frequencies (base / scaled, what convert_hf_to_gguf.py stores), and the rope_scaling we return must make
transformers compute the same frequencies: published Llama 3.1/3.2 values, an unusual scaling found by the fit,
the metadata's factor, and tensors that no llama3 scaling explains refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

from mlxmodels.formats.gguf import GGUFError, GGUFFile
from mlxmodels.formats.gguf_rope import factors, llama3_scaling

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")


def hf_inv_freq(dims: int, theta: float, scaling: dict = None) -> np.ndarray:
    """transformers' inverse frequencies for a Llama with head_dim `dims` (llama3 scaling when given)."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = dict(scaling or {"rope_type": "linear", "factor": 1.0})  # unscaled; LlamaConfig edits the dict
    cfg = LlamaConfig(hidden_size=dims * 4, num_attention_heads=4, head_dim=dims, rope_theta=theta,
                      rope_scaling=scaling, max_position_embeddings=131072)
    inv, _ = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](cfg, "cpu")
    return inv.double().numpy()


def write(path, stored: np.ndarray, metadata: dict = None):
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in (metadata or {}).items():
        {int: w.add_uint32, float: w.add_float32}[type(value)](key, value)
    w.add_tensor("rope_freqs.weight", stored)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return GGUFFile(path)


def scaling(**kw):
    return {"rope_type": "llama3", **kw}


CASES = {  # name: (head_dim, rope_theta, rope_scaling)
    "Llama 3.1 8B": (128, 500000.0, scaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                            original_max_position_embeddings=8192)),
    "Llama 3.2 1B": (64, 500000.0, scaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                           original_max_position_embeddings=8192)),
    "unusual": (128, 10000.0, scaling(factor=16.0, low_freq_factor=1.0, high_freq_factor=8.0,
                                      original_max_position_embeddings=4096)),
}


@pytest.mark.parametrize("case", CASES)
def test_scaling_gives_transformers_frequencies(tmp_path, case):
    dims, theta, published = CASES[case]
    want = hf_inv_freq(dims, theta, published)
    stored = (hf_inv_freq(dims, theta) / want).astype(np.float32)  # what convert_hf_to_gguf.py writes
    assert np.allclose(stored, factors(dims, theta, *(published[k] for k in (
        "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"))), rtol=1e-5)
    g = write(tmp_path / "r.gguf", stored)
    got = llama3_scaling(g, "llama", dims, theta)
    g.close()
    assert got == published
    assert np.allclose(hf_inv_freq(dims, theta, got), want, rtol=1e-6, atol=0)


def test_metadata_factor_and_context_are_used(tmp_path):
    """A factor whose every pair is past the boundary is only known from the metadata; with no medium pairs the
    boundaries come from the metadata's original context."""
    dims, theta = 16, 10000.0
    published = scaling(factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=2048)
    stored = (hf_inv_freq(dims, theta) / hf_inv_freq(dims, theta, published)).astype(np.float32)
    meta = {"llama.rope.scaling.factor": 4.0, "llama.rope.scaling.original_context_length": 2048}
    g = write(tmp_path / "r.gguf", stored, meta)
    got = llama3_scaling(g, "llama", dims, theta)
    g.close()
    assert np.allclose(hf_inv_freq(dims, theta, got), hf_inv_freq(dims, theta, published), rtol=1e-6)


def test_all_ones_is_no_scaling(tmp_path):
    g = write(tmp_path / "r.gguf", np.ones(64, np.float32))
    assert llama3_scaling(g, "llama", 128, 500000.0) is None
    g.close()


@pytest.mark.parametrize("stored,needle", [
    (np.linspace(1, 3, 64, dtype=np.float32)[::-1].copy(), "does not follow Llama 3's RoPE scaling"),
    (np.full(64, -1.0, np.float32), "not positive numbers"),
    (np.ones(32, np.float32), "not F32 [64]"),
])
def test_unexplained_tensors_refused(tmp_path, stored, needle):
    g = write(tmp_path / "r.gguf", stored)
    with pytest.raises(GGUFError) as e:
        llama3_scaling(g, "llama", 128, 500000.0)
    g.close()
    assert needle in str(e.value) and "\n" not in str(e.value) and "rope_freqs.weight" in str(e.value)
