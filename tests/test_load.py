"""Loading: bad input gives a clear error naming the culprit; mlx-lm folders (quantized too) load; Hub path."""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest

import mlxmodels
from mlxmodels.config import ConfigError, ModelError
from mlxmodels.errors import ModelError
from mlxmodels.load import LoadError
from tests.oracle import build_tiny_llama, edit_config



@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture
def copy(llama_folder, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(llama_folder, dst)
    return dst


def rewrite_weights(folder, fn):
    path = folder / "model.safetensors"
    weights = dict(mx.load(str(path)))
    fn(weights)
    mx.save_safetensors(str(path), weights)


def test_unknown_model_type_lists_supported(copy):
    edit_config(copy, lambda c: c.update(model_type="transformer9000"))
    with pytest.raises(ConfigError, match=r"unsupported model_type 'transformer9000'; supported: .*gemma3_text.*llama"):
        mlxmodels.load(copy)


def test_missing_config_key_takes_transformers_default(copy):
    """No hidden_size: transformers' Llama default (4096) applies, and the weights are named as disagreeing."""
    edit_config(copy, lambda c: c.pop("hidden_size"))
    with pytest.raises(LoadError,
                       match=r"embed_tokens.weight has shape \(\d+, 64\) but config.json implies \(\d+, 4096\)"):
        mlxmodels.load(copy)


def test_missing_tensor_is_named(copy):
    rewrite_weights(copy, lambda w: w.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(LoadError, match=r"missing 1 tensor\(s\), e.g. model.layers.1.mlp.up_proj.weight"):
        mlxmodels.load(copy)


def test_unexpected_tensor_is_named(copy):
    rewrite_weights(copy, lambda w: w.update({"model.layers.7.extra.weight": mx.zeros((2,))}))
    with pytest.raises(LoadError, match="unexpected tensor.*model.layers.7.extra.weight"):
        mlxmodels.load(copy)


def test_shape_mismatch_is_named(copy):
    edit_config(copy, lambda c: c.update(intermediate_size=96))
    with pytest.raises(LoadError, match=r"model.layers.0.mlp.gate_proj.weight has shape \(128, 64\) but .* \(96, 64\)"):
        mlxmodels.load(copy)


def test_fewer_layers_in_config_leaves_unexpected_tensors(copy):
    edit_config(copy, lambda c: c.update(num_hidden_layers=1))
    with pytest.raises(LoadError, match="unexpected tensor.*model.layers.1"):
        mlxmodels.load(copy)


def test_damaged_weights_file(copy):
    path = copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelError, match="model.safetensors.*truncated"):
        mlxmodels.load(copy)


def test_missing_shard_listed_in_index(copy):
    (copy / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ModelError, match="missing shard.*model-00001-of-00002.safetensors"):
        mlxmodels.load(copy)


def test_no_weights_no_config(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        mlxmodels.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        mlxmodels.load(tmp_path)


def test_not_a_folder_nor_hub_id(tmp_path):
    with pytest.raises(ModelError, match="not a model folder or a Hugging Face Hub id"):
        mlxmodels.load(tmp_path / "nowhere" / "deep" / "x")


def test_unknown_activation(copy):
    edit_config(copy, lambda c: c.update(hidden_act="swoosh"))
    with pytest.raises(ConfigError, match="unsupported hidden_act 'swoosh'"):
        mlxmodels.load(copy)


def test_dtype_policy(llama_folder):
    model, _ = mlxmodels.load(llama_folder)
    assert model.model.embed_tokens.weight.dtype == mx.float32  # CPU backend: float32 activations
    model, _ = mlxmodels.load(llama_folder, dtype="bfloat16")
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == mx.bfloat16
    with pytest.raises(ModelError, match="unknown dtype 'float7'"):
        mlxmodels.load(llama_folder, dtype="float7")


def logits(model, ids):
    return np.array(model(mx.array(ids)).astype(mx.float32))


@pytest.mark.parametrize("quantize", [False, True])
def test_mlx_lm_converted_folder_loads(llama_folder, tmp_path, quantize):
    from mlx_lm.convert import convert
    from mlx_lm.utils import load_model

    out = tmp_path / "mlx"
    convert(str(llama_folder), str(out), quantize=quantize, q_group_size=32, q_bits=4, dtype="float32")
    ids = np.arange(20)[None] % 256
    theirs = logits(load_model(out)[0], ids)
    mine = logits(mlxmodels.load(out)[0], ids)
    np.testing.assert_allclose(mine, theirs, atol=1e-4, rtol=0)
    if quantize:
        assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 4
        ref = logits(mlxmodels.load(llama_folder)[0], ids)
        assert 1e-4 < np.abs(mine - ref).max() < 0.5 * np.abs(ref).max()  # quantized: close, not equal


def test_hub_id_resolves_through_the_offline_cache(llama_folder, tmp_path, monkeypatch):
    """A Hub id is fetched with huggingface_hub; offline, it comes from the HF cache (here a fake one)."""
    cache = tmp_path / "hub"
    snap = cache / "models--someorg--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(llama_folder, snap)
    (cache / "models--someorg--tiny" / "refs").mkdir()
    (cache / "models--someorg--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    model, _ = mlxmodels.load("someorg/tiny")
    assert model.spec.num_layers == 2
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        mlxmodels.load("someorg/absent")
