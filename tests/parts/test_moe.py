"""Routers against an independent NumPy reference; stacked experts against a per-expert loop; tied routing
against transformers."""

import shutil

import mlx.core as mx
import numpy as np
import pytest
import torch

import mlxmodels
from mlxmodels.parts.experts import SwitchMLP
from mlxmodels.parts.moe import route
from mlxmodels.spec import MoESpec
from tests.oracle import build_hf, hf_logits


def np_route(logits, spec: MoESpec, bias=None):
    """-> list of {expert: weight} per token. Ties: lower index first (stable sorts)."""
    logits = logits.astype(np.float64)
    if spec.score == "softmax":
        e = np.exp(logits - logits.max(-1, keepdims=True))
        scores = e / e.sum(-1, keepdims=True)
    else:
        scores = 1 / (1 + np.exp(-logits))
    out = []
    for t in range(len(scores)):
        choice = scores[t] + (bias if bias is not None else 0)
        if spec.n_group and spec.topk_group < spec.n_group:
            groups = choice.reshape(spec.n_group, -1)
            gs = np.sort(groups, -1)[:, -2:].sum(-1) if spec.group_score == "top2" else groups.max(-1)
            keep = np.argsort(-gs, kind="stable")[: spec.topk_group]
            mask = np.full(spec.n_group, -np.inf)
            mask[keep] = 0
            choice = (groups + mask[:, None]).reshape(-1)
        idx = np.argsort(-choice, kind="stable")[: spec.top_k]
        w = scores[t][idx]
        if spec.norm_topk:
            w = w / (w.sum() + 1e-20)
        out.append(dict(zip(idx.tolist(), (w * spec.scaling).tolist())))
    return out


def ours(logits, spec, bias=None):
    w, idx = route(mx.array(logits), spec, None if bias is None else mx.array(bias))
    return [dict(zip(i, x)) for i, x in zip(np.array(idx).tolist(), np.array(w).tolist())]


def assert_same(got, want):
    for g, w in zip(got, want):
        assert sorted(g) == sorted(w)
        for e in w:
            assert g[e] == pytest.approx(w[e], rel=1e-5, abs=1e-7)


SPECS = {
    "mixtral": MoESpec(8, 2, 16, norm_topk=True),
    "qwen-no-renorm": MoESpec(8, 3, 16),
    "v2-greedy-scaled": MoESpec(16, 4, 16, scaling=2.0),
    "v2-group-limited": MoESpec(16, 3, 16, n_group=4, topk_group=2, group_score="max"),
    "v3-noaux": MoESpec(16, 4, 16, score="sigmoid", n_group=4, topk_group=2, group_score="top2",
                        correction_bias=True, norm_topk=True, scaling=2.5),
    "llama4-top1-sigmoid": MoESpec(8, 1, 16, score="sigmoid"),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_router_matches_numpy(name):
    spec = SPECS[name]
    rng = np.random.default_rng(len(name))
    logits = rng.normal(size=(64, spec.n_experts)).astype(np.float32) * 2
    bias = rng.normal(size=spec.n_experts).astype(np.float32) if spec.correction_bias else None
    assert_same(ours(logits, spec, bias), np_route(logits, spec, bias))


def test_correction_bias_steers_choice_not_weights():
    spec = SPECS["v3-noaux"]
    logits = np.zeros((1, 16), np.float32)
    logits[0, :4] = 1.0  # experts 0-3 score highest ...
    bias = np.zeros(16, np.float32)
    bias[12:] = 5.0  # ... but the bias makes 12-15 win the choice
    got = ours(logits, spec, bias)[0]
    assert sorted(got) == [12, 13, 14, 15]
    assert all(w == pytest.approx(2.5 / 4) for w in got.values())  # equal sigmoid(0) scores, renormalised, scaled


@pytest.mark.parametrize("name", ["v2-group-limited", "v3-noaux"])
def test_group_ties_go_to_the_lower_group(name):
    spec = SPECS[name]
    logits = np.full((2, 16), -3.0, np.float32)
    logits[:, 4:8] = logits[:, 8:12] = [2.0, 1.5, 0.0, -1.0]  # groups 1 and 2 tie exactly, group 0 and 3 lose
    logits[1, 0:4] = logits[1, 4:8]  # token 1: group 0 ties too; topk_group=2 keeps groups 0 and 1
    bias = np.zeros(16, np.float32) if spec.correction_bias else None
    got, want = ours(logits, spec, bias), np_route(logits, spec, bias)
    assert_same(got, want)
    assert set(got[0]) <= set(range(4, 12)) and set(got[1]) <= set(range(0, 8))


def test_switch_mlp_equals_a_loop_over_experts():
    mx.random.seed(0)
    E, D, H, N, k = 6, 16, 24, 80, 2  # N * k above the sorting threshold, and a small batch below it
    mlp = SwitchMLP(D, H, E)
    x = mx.random.normal((N, D))
    idx = mx.array(np.random.default_rng(0).integers(0, E, size=(N, k)), dtype=mx.uint32)
    g, u, d = (np.array(p.weight) for p in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    xn, ix = np.array(x), np.array(idx)
    want = np.zeros((N, k, D), np.float32)
    for n in range(N):
        for j in range(k):
            e = ix[n, j]
            h = xn[n] @ g[e].T
            want[n, j] = ((h / (1 + np.exp(-h))) * (xn[n] @ u[e].T)) @ d[e].T
    np.testing.assert_allclose(np.array(mlp(x, idx)), want, atol=1e-4)
    np.testing.assert_allclose(np.array(mlp(x[:5], idx[:5])), want[:5], atol=1e-4)


def test_tied_groups_match_transformers(tmp_path):
    """Group 1 is an exact copy of group 0 (router rows, bias, experts), so every token sees tied groups; any
    tie-break gives the same output, which must equal transformers'."""
    cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=4, vocab_size=256, max_position_embeddings=256, pad_token_id=0,
               n_routed_experts=8, num_experts_per_tok=3, moe_intermediate_size=32, n_shared_experts=1,
               first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
               head_dim=8, v_head_dim=8, n_group=4, topk_group=2)
    hf = build_hf("deepseek_v3", tmp_path / "src", **cfg)
    with torch.no_grad():
        moe = hf.model.layers[1].mlp
        moe.gate.weight[2:4] = moe.gate.weight[0:2]
        moe.gate.e_score_correction_bias[2:4] = moe.gate.e_score_correction_bias[0:2]
        moe.experts.gate_up_proj[2:4] = moe.experts.gate_up_proj[0:2]
        moe.experts.down_proj[2:4] = moe.experts.down_proj[0:2]
    hf.save_pretrained(tmp_path / "tied")
    ids = np.random.default_rng(1).integers(0, 256, size=(1, 40))
    model, _ = mlxmodels.load(tmp_path / "tied")
    np.testing.assert_allclose(np.array(model(mx.array(ids))), hf_logits(hf, ids), atol=1e-4, rtol=0)
