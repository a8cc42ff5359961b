"""MLA: the cache holds only (kv_lora_rank + qk_rope_head_dim) values per token per layer, and the absorbed
form gives the same logits as the expanded one."""

import mlx.core as mx
import numpy as np
import pytest

import mlxmodels
from mlxmodels.parts import mla
from tests.oracle import build_hf

CFG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
           vocab_size=256, max_position_embeddings=1024, pad_token_id=0, n_routed_experts=4, num_experts_per_tok=2,
           moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=24,
           qk_nope_head_dim=16, qk_rope_head_dim=8, head_dim=8, v_head_dim=16, n_group=1, topk_group=1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("dsv3")
    build_hf("deepseek_v3", path, **CFG)
    return path


@pytest.mark.parametrize("dtype, size", [("float32", 4), ("bfloat16", 2)])
def test_cache_bytes_per_token_is_the_latent_row(folder, dtype, size):
    model, _ = mlxmodels.load(folder, dtype=dtype)
    cache = model.make_cache()
    n = 256  # caches grow in steps of 256 tokens, so this fills exactly what is allocated
    mx.eval(model(mx.array(np.arange(n)[None] % 256), cache=cache))
    per_token = sum(c.nbytes for c in cache) / n
    assert per_token == (CFG["kv_lora_rank"] + CFG["qk_rope_head_dim"]) * CFG["num_hidden_layers"] * size
    # an expanded cache would hold H * (nope + rope + v) per layer: here 4 * 40 = 160 vs 32 values
    assert per_token < CFG["num_attention_heads"] * (16 + 8 + 16) * CFG["num_hidden_layers"] * size / 4


def test_absorbed_equals_expanded(folder, monkeypatch):
    model, _ = mlxmodels.load(folder)
    ids = np.random.default_rng(0).integers(0, 256, size=(1, 40))

    def run(absorb_max, sizes):
        monkeypatch.setattr(mla, "ABSORB_MAX_QUERIES", absorb_max)
        cache, out, start = model.make_cache(), [], 0
        for s in sizes:
            out.append(np.array(model(mx.array(ids[:, start:start + s]), cache=cache)))
            start += s
        return np.concatenate(out, axis=1)

    expanded = run(0, [40])
    np.testing.assert_allclose(run(10**6, [40]), expanded, atol=1e-4, rtol=0)  # all absorbed
    np.testing.assert_allclose(run(0, [17, 23]), expanded, atol=1e-4, rtol=0)  # expanded over a cached prefix
    np.testing.assert_allclose(run(10**6, [1] * 40), expanded, atol=1e-4, rtol=0)  # decode, absorbed
