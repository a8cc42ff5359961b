"""DeepSeek-V3 GGUFs with MTP modules, as llama.cpp writes them (the module's block counted in block_count,
`deepseek2.nextn_predict_layers`, its own tensors as blk.N.nextn.*): the file loads with its MTP module, whose
logits and the main model's equal the same model loaded from its folder (and the independent reference), and
speculative MTP decoding on it gives plain greedy decoding's tokens."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlxmodels
from mlxmodels.formats.gguf import GGUFError
from tests import mtp_fixture
from tests.formats.test_gguf_archs import export

gguf = pytest.importorskip("gguf")
N = mtp_fixture.N_LAYERS


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(model from the GGUF, model from the folder, folder, transformers model with the MTP block as a layer)."""
    folder, full = mtp_fixture.build(tmp_path_factory.mktemp("gguf-mtp") / "dsv3")
    path = export(full, "deepseek2", folder, folder / "m.gguf", quantize=False, nextn=1)
    names = {t.name for t in gguf.GGUFReader(path).tensors}
    assert {f"blk.{N}.nextn.eh_proj.weight", f"blk.{N}.nextn.shared_head_head.weight"} <= names
    return mlxmodels.load(path, dtype="float32")[0], mlxmodels.load(folder, dtype="float32")[0], folder, full


def test_gguf_mtp_equals_folder(models):
    ours, folder_model, folder, full = models
    assert ours.spec.num_layers == N and len(ours.mtp_modules) == 1
    ids = np.random.default_rng(5).integers(0, 256, size=(1, 24))
    np.testing.assert_allclose(np.array(ours(mx.array(ids))), np.array(folder_model(mx.array(ids))), atol=1e-5)
    drafts = []
    for model in (ours, folder_model):
        h = model.model(mx.array(ids[:, :-1]), model.make_cache())  # (1, 23, D) main hidden, normed
        drafts.append(np.array(model.mtp_step(0, mx.array(ids[:, 1:]), h, model.make_mtp_cache()[0])[1]))
    np.testing.assert_allclose(drafts[0], drafts[1], atol=1e-5)
    np.testing.assert_allclose(drafts[0], mtp_fixture.reference(full, folder, ids), atol=1e-4)


def test_gguf_mtp_speculative_equals_plain(models):
    ours = models[0]
    prompt = [5, 17, 99, 3, 250, 8, 41]
    plain = [r.token for r in mlxmodels.stream_generate(ours, None, prompt, max_tokens=24)]
    out = list(mlxmodels.stream_generate(ours, None, prompt, max_tokens=24, draft="mtp", num_draft=2))
    assert [r.token for r in out] == plain
    assert out[-1].draft_proposed > 0


def test_gguf_nextn_count_past_the_blocks_is_refused(models, tmp_path):
    full, folder = models[3], models[2]
    path = export(full, "deepseek2", folder, tmp_path / "bad.gguf", quantize=False, nextn=N + 1)
    with pytest.raises(GGUFError, match="nextn_predict_layers' is 3, not fewer than the 3 blocks"):
        mlxmodels.load(path)
