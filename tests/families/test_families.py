"""Every family against transformers (float32 logits): full prefill, token-by-token decode with the cache,
chunked prefill, greedy generation; both config dialects; and against mlx-lm where mlx-lm is right."""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
import torch

import mlxmodels
from tests.dialects import legacy
from tests.oracle import build_hf, edit_config, hf_greedy, hf_logits

TOL = 1e-4
SEQ = 48
BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=256,
            pad_token_id=0, bos_token_id=1, eos_token_id=2)

MLA = dict(BASE, num_hidden_layers=3, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2,
           moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=16,
           qk_nope_head_dim=8, qk_rope_head_dim=8, head_dim=8, v_head_dim=12)

# name -> (model_type, config, what mlx-lm gets wrong or None)
CASES = {
    "llama3": ("llama", dict(BASE, rope_theta=500000.0, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16)), None),
    "llama2-linear": ("llama", dict(BASE, num_key_value_heads=4, attention_bias=True, mlp_bias=True,
                                    rope_scaling=dict(rope_type="linear", factor=2.0)), None),
    "llama-dynamic": ("llama", dict(BASE, max_position_embeddings=32,
                                    rope_scaling=dict(rope_type="dynamic", factor=2.0)), None),
    "llama-yarn": ("llama", dict(BASE, rope_scaling=dict(rope_type="yarn", factor=4.0,
                                                          original_max_position_embeddings=16)), None),
    "mistral": ("mistral", dict(BASE, sliding_window=8), "ignores the sliding window"),
    "qwen2": ("qwen2", dict(BASE, num_key_value_heads=1), None),
    "qwen3": ("qwen3", dict(BASE, use_sliding_window=True, sliding_window=8, max_window_layers=1),
              "ignores the sliding window"),
    "gemma3": ("gemma3_text", dict(BASE, num_hidden_layers=6, sliding_window=8, query_pre_attn_scalar=24,
                                   rope_scaling=dict(rope_type="linear", factor=8.0)), None),
    "gemma2": ("gemma2", dict(BASE, num_hidden_layers=3, sliding_window=8, query_pre_attn_scalar=24,
                              final_logit_softcapping=3.0, attn_logit_softcapping=5.0), "ignores the sliding window"),
    "olmo2": ("olmo2", dict(BASE), None),
    "smollm3": ("smollm3", dict(BASE, num_hidden_layers=4, no_rope_layer_interval=2), None),
    "gpt2": ("gpt2", dict(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=256),
             "cannot load transformers-5 GPT-2 folders (weights prefixed `transformer.`)"),
    # sparse and latent: MoE layers mixed with dense ones, group-limited routing, MLA, chunked attention
    "mixtral": ("mixtral", dict(BASE, num_local_experts=4, num_experts_per_tok=2), None),
    "qwen2_moe": ("qwen2_moe", dict(BASE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                    shared_expert_intermediate_size=64, mlp_only_layers=[0]),
                  "ignores mlp_only_layers (dense layers among MoE layers)"),
    "qwen3_moe": ("qwen3_moe", dict(BASE, num_experts=8, num_experts_per_tok=3, moe_intermediate_size=32,
                                    norm_topk_prob=True, mlp_only_layers=[1]), None),
    "deepseek_v2_lite": ("deepseek_v2", dict(MLA, q_lora_rank=None, rope_scaling=dict(  # as V2-Lite's config
        rope_type="yarn", factor=4.0, mscale=0.707, mscale_all_dim=0.707, original_max_position_embeddings=16,
        beta_fast=32, beta_slow=1)), None),
    "deepseek_v2_group": ("deepseek_v2", dict(MLA, topk_method="group_limited_greedy", n_group=4, topk_group=2,
                                              routed_scaling_factor=1.5),
                          "crashes when config.json has no rope_scaling"),
    "deepseek_v3": ("deepseek_v3", dict(MLA, n_group=4, topk_group=2, routed_scaling_factor=2.5), None),
    "deepseek_v3_yarn": ("deepseek_v3", dict(MLA, n_group=4, topk_group=2, rope_scaling=dict(
        rope_type="yarn", factor=4.0, mscale=1.0, mscale_all_dim=0.8, original_max_position_embeddings=16)), None),
    "llama4": ("llama4_text", dict(BASE, num_hidden_layers=4, num_local_experts=4, num_experts_per_tok=1,
                                   intermediate_size_mlp=96, attention_chunk_size=8, interleave_moe_layer_step=2,
                                   floor_scale=4, attn_scale=0.5, use_qk_norm=True),
               "its llama4_text has no MoE layers"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    model_type, config, mlx_lm_gap = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    hf = build_hf(model_type, folder, seed=len(request.param), **config)
    ids = np.random.default_rng(0).integers(0, 256, size=(1, SEQ))
    return dict(name=request.param, hf=hf, folder=folder, ids=ids, ref=hf_logits(hf, ids), gap=mlx_lm_gap)


def ours(folder):
    model, _ = mlxmodels.load(folder, dtype="float32")
    return model


def run_chunks(model, ids, sizes):
    cache, out, start = model.make_cache(), [], 0
    for size in sizes:
        out.append(np.array(model(mx.array(ids[:, start:start + size]), cache=cache)))
        start += size
    assert cache[0].offset == start
    return np.concatenate(out, axis=1)


def hf_chunks(hf, ids, sizes):
    """transformers' own cached forward, chunk by chunk (its dynamic RoPE depends on how the text arrives)."""
    from transformers import DynamicCache

    cache, out, start = DynamicCache(config=hf.config), [], 0
    with torch.no_grad():
        for size in sizes:
            r = hf(torch.tensor(ids[:, start:start + size]), past_key_values=cache, use_cache=True)
            out.append(r.logits.float().numpy())
            start += size
    return np.concatenate(out, axis=1)


def reference(case, sizes):
    return hf_chunks(case["hf"], case["ids"], sizes) if case["name"] == "llama-dynamic" else case["ref"]


def test_prefill(case):
    got = np.array(ours(case["folder"])(mx.array(case["ids"])))
    assert got.shape == case["ref"].shape
    np.testing.assert_allclose(got, case["ref"], atol=TOL, rtol=0)


def test_decode_token_by_token(case):
    sizes = [1] * SEQ
    np.testing.assert_allclose(run_chunks(ours(case["folder"]), case["ids"], sizes), reference(case, sizes),
                               atol=TOL, rtol=0)


def test_chunked_prefill(case):
    sizes = [13, 7, 1, 20, 7]  # chunks longer and shorter than the window
    np.testing.assert_allclose(run_chunks(ours(case["folder"]), case["ids"], sizes), reference(case, sizes),
                               atol=TOL, rtol=0)


def test_greedy_generation(case):
    prompt = case["ids"][:, :8]
    want = hf_greedy(case["hf"], prompt, 32)
    model = ours(case["folder"])
    got = [r.token for r in mlxmodels.stream_generate(model, None, prompt[0].tolist(), max_tokens=32)]
    assert got == want


def test_legacy_dialect(case, tmp_path):
    old = tmp_path / "legacy"
    shutil.copytree(case["folder"], old)
    cfg = edit_config(old, legacy)
    assert "rope_parameters" not in cfg and "layer_types" not in cfg
    got = np.array(ours(old)(mx.array(case["ids"])))
    np.testing.assert_allclose(got, reference(case, [SEQ]), atol=TOL, rtol=0)


def mlx_lm_run(folder, ids):
    """mlx-lm's logits for a full prefill and for token-by-token decode with its own cache."""
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.utils import load_model

    model, _ = load_model(folder)
    full = np.array(model(mx.array(ids)).astype(mx.float32))
    cache = make_prompt_cache(model)
    steps = [np.array(model(mx.array(ids[:, i:i + 1]), cache=cache).astype(mx.float32)) for i in range(ids.shape[1])]
    return full, np.concatenate(steps, axis=1)


def test_against_mlx_lm(case, tmp_path):
    """mlx-lm reads the older dialect; where it computes the same model our logits equal its logits."""
    old = tmp_path / "legacy"
    shutil.copytree(case["folder"], old)
    edit_config(old, legacy)
    mine = np.array(ours(old)(mx.array(case["ids"])))
    np.testing.assert_allclose(mine, reference(case, [SEQ]), atol=TOL, rtol=0)
    if case["gap"] is None:
        full, steps = mlx_lm_run(old, case["ids"])
        np.testing.assert_allclose(mine, full, atol=TOL, rtol=0)
        np.testing.assert_allclose(run_chunks(ours(old), case["ids"], [1] * SEQ), steps, atol=TOL, rtol=0)
        np.testing.assert_allclose(steps, reference(case, [1] * SEQ), atol=TOL, rtol=0)
        return
    # mlx-lm is wrong here (case["gap"]): it must fail to load or differ from transformers; we agree with
    # transformers only (checked above and in the other tests).
    try:
        full, steps = mlx_lm_run(old, case["ids"])
    except Exception:  # mlx-lm cannot load it at all: that is the gap
        return
    err = max(np.abs(full - case["ref"]).max(), np.abs(steps - reference(case, [1] * SEQ)).max())
    assert err > 1e-3, f"mlx-lm now gets {case['name']} right; drop its gap note"
