"""Compiled few-token steps (parts/compiled.py): the same numbers as eager, and weights changed after the first
compiled call (reloaded, quantized) are the ones used."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

import mlxmodels
from mlxmodels.parts import compiled
from tests import mtp_fixture
from tests.families.test_families import CASES
from tests.oracle import build_hf

PROMPT = [5, 17, 99, 3, 250, 8, 41, 12, 7]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    for case in ("llama3", "gemma3", "qwen3_moe", "deepseek_v2_lite"):
        model_type, config, _ = CASES[case]
        folder = tmp_path_factory.mktemp(case)
        build_hf(model_type, folder, seed=3, **config)
        out[case] = mlxmodels.load(folder)[0]
    folder, _ = mtp_fixture.build(tmp_path_factory.mktemp("mtp") / "dsv3")
    out["deepseek_v3_mtp"] = mlxmodels.load(folder)[0]
    return out


def steps(model, enabled: bool, monkeypatch):
    """Logits of a prompt, then of steps of 1 and 4 tokens (the compiled sizes), plus an MTP step if the model has
    MTP modules."""
    monkeypatch.setattr(compiled, "ENABLED", enabled)
    cache = model.make_cache()
    out = [model(mx.array([PROMPT[:4]]), cache=cache), model(mx.array([PROMPT[4:5]]), cache=cache),
           model(mx.array([PROMPT[5:]]), cache=cache)]
    if model.mtp_modules:
        h = model.model(mx.array([PROMPT]), model.make_cache())
        out.append(model.mtp_step(0, mx.array([PROMPT[1:4]]), h[:, :3], model.make_mtp_cache()[0])[1])
    return [np.array(o) for o in out]


def assert_same_steps(model, monkeypatch):
    eager = steps(model, False, monkeypatch)
    for got, want in zip(steps(model, True, monkeypatch), eager):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["llama3", "gemma3", "qwen3_moe", "deepseek_v2_lite", "deepseek_v3_mtp"])
def test_compiled_steps_equal_eager(models, case, monkeypatch):
    assert_same_steps(models[case], monkeypatch)


def test_weights_changed_after_the_first_compiled_call_are_used(models, monkeypatch):
    model = models["qwen3_moe"]
    before = steps(model, True, monkeypatch)
    old = dict(tree_flatten(model.parameters()))
    model.update(tree_map(lambda w: w * 1.5 if w.ndim > 1 else w, model.parameters()))
    try:
        changed = steps(model, True, monkeypatch)
        assert not np.allclose(changed[1], before[1], atol=1e-3)  # the new weights reached the compiled step
        assert_same_steps(model, monkeypatch)
    finally:
        model.load_weights(list(old.items()))


def test_quantizing_after_the_first_compiled_call_is_seen(models, monkeypatch):
    model = models["deepseek_v3_mtp"]
    steps(model, True, monkeypatch)
    nn.quantize(model, group_size=32, bits=4, class_predicate=lambda _, m: isinstance(m, nn.Linear))
    assert_same_steps(model, monkeypatch)
