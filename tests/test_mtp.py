"""MTP modules load from DeepSeek-V3 checkpoints and compute what an independent reference computes."""

import mlx.core as mx
import numpy as np
import pytest

import mlxmodels
from tests import mtp_fixture


@pytest.fixture(scope="module")
def mtp(tmp_path_factory):
    folder, full = mtp_fixture.build(tmp_path_factory.mktemp("mtp") / "dsv3")
    return folder, full


def test_mtp_module_loads_and_shares_embedding_and_head(mtp):
    model, _ = mlxmodels.load(mtp[0])
    assert len(model.mtp_modules) == 1 and model.spec.num_layers == mtp_fixture.N_LAYERS
    names = {k for k, _ in __import__("mlx.utils").utils.tree_flatten(model.parameters())}
    assert "model.layers.2.eh_proj.weight" in names and "model.layers.2.shared_head.norm.weight" in names
    assert not any(k.endswith(("shared_head.head.weight", "layers.2.embed_tokens.weight")) for k in names)


def test_mtp_forward_matches_reference(mtp):
    folder, full = mtp
    model, _ = mlxmodels.load(folder)
    ids = np.random.default_rng(3).integers(0, 256, size=(1, 30))
    want = mtp_fixture.reference(full, folder, ids)
    h = model.model(mx.array(ids[:, :-1]), model.make_cache())  # (1, 29, D) main hidden, normed
    _, logits = model.mtp_step(0, mx.array(ids[:, 1:]), h, model.make_mtp_cache()[0])
    np.testing.assert_allclose(np.array(logits), want, atol=1e-4, rtol=0)
    # and fed position by position through its own cache
    cache, steps = model.make_mtp_cache()[0], []
    for i in range(ids.shape[1] - 1):
        steps.append(np.array(model.mtp_step(0, mx.array(ids[:, i + 1:i + 2]), h[:, i:i + 1], cache)[1]))
    np.testing.assert_allclose(np.concatenate(steps, 1), want, atol=1e-4, rtol=0)


def test_config_announcing_mtp_without_weights_loads_without_it(tmp_path):
    from tests.oracle import build_hf

    build_hf("deepseek_v3", tmp_path, num_hidden_layers=2, num_nextn_predict_layers=1, **mtp_fixture.CFG)
    model, _ = mlxmodels.load(tmp_path)
    assert model.mtp_modules == [] and model.make_mtp_cache() == []
