"""`mlxm convert x.gguf OUT [-q]`: an MLX folder that mlx-lm loads with our logits and whose tokenizer gives the
GGUF's ids. Without -q the GGUF's quantized layers are written as stored (bit for bit: our load of OUT equals our
load of the GGUF exactly); with -q they are dequantized and requantized as any checkpoint is. On a tiny synthetic
GGUF (tests/gguf_tiny.py) and on the real SmolLM2-135M-Instruct Q4_1 (tests/gguf_fixture.py)."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

import mlxmodels
from quantize import recipes
from quantize.convert import Options, convert
from tests.gguf_fixture import smollm2  # noqa: F401 (fixture)
from tests.gguf_tiny import write_tiny_gguf

pytest.importorskip("gguf")
TEXTS = ["Hello! How are you?", "the world well", "x =  12 + 345;\n\tprint(x)", "Ünïcödé 日本語 🙂 emoji"]


def logits(model, ids):
    return np.array(model(mx.array([ids])).astype(mx.float32))


def mlx_lm_load(folder):
    mlx_lm = pytest.importorskip("mlx_lm")
    model, tokenizer = mlx_lm.load(str(folder))
    model.set_dtype(mx.float32)  # the same compute dtype as ours (the CPU computes quantized models in float32)
    return model, tokenizer


def chat_ids(tokenizer, text):
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                           tokenize=False)
    return prompt, tokenizer.encode(prompt, add_special_tokens=False)


def check_tokenizers(ours, folder_tok, theirs):
    """The GGUF's tokenizer, OUT's as we read it and OUT's as mlx-lm (transformers) reads it: the same ids, the
    same chat prompt, the same text back."""
    for text in TEXTS:
        ids = ours.encode(text)
        assert folder_tok.encode(text) == ids and theirs.encode(text) == ids, text
        assert theirs.decode(ids) == ours.decode(ids) == text
        prompt, ids = chat_ids(ours, text)
        assert chat_ids(folder_tok, text) == (prompt, ids)
        assert theirs.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                          tokenize=False) == prompt
    assert folder_tok.eos_token_ids == ours.eos_token_ids and set(theirs.eos_token_ids) == ours.eos_token_ids


@pytest.fixture
def tiny_gguf(tmp_path):
    return write_tiny_gguf(tmp_path / "tiny.gguf", sampling={"temp": 0.7, "top_k": 40, "top_p": 0.9})


def test_tiny_kept_as_stored(tiny_gguf, tmp_path):
    result = convert(tiny_gguf, tmp_path / "out")
    out = result.folder
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "model.safetensors.index.json",
                                               "tokenizer.json", "tokenizer_config.json", "generation_config.json"}
    cfg = json.loads((out / "config.json").read_text())
    # layer 0 Q8_0, layer 1 Q4_1 and the head Q4_0: 4 bits is the common width, layer 0's modules are overrides
    assert cfg["quantization"]["bits"] == 4 and cfg["quantization"]["group_size"] == 32
    assert cfg["quantization"]["model.layers.0.mlp.up_proj"] == {"group_size": 32, "bits": 8}
    assert result.quantization == cfg["quantization"]
    # the parameters of the float model, not the packed words: as many as the requantized folder counts
    again = convert(tiny_gguf, tmp_path / "q8", Options(quantize=True,
                                                       setting=recipes.Setting.for_mode("affine", 8, 32)))
    assert result.parameters == again.parameters and 4 < result.bits_per_weight < 16  # norms, F16 tensors
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == {"temperature": 0.7, "top_k": 40, "top_p": 0.9, "do_sample": True, "bos_token_id": 1,
                          "eos_token_id": [2]}

    ours, tok = mlxmodels.load(tiny_gguf)
    again, folder_tok = mlxmodels.load(out)
    theirs, their_tok = mlx_lm_load(out)
    check_tokenizers(tok, folder_tok, their_tok)
    _, ids = chat_ids(tok, TEXTS[0])
    want = logits(ours, ids)
    assert np.array_equal(logits(again, ids), want)  # the very same weights
    assert np.abs(logits(theirs, ids) - want).max() < 1e-4


def test_tiny_requantized(tiny_gguf, tmp_path):
    setting = recipes.Setting.for_mode("affine", bits=8, group_size=32)
    result = convert(tiny_gguf, tmp_path / "q8", Options(quantize=True, setting=setting))
    cfg = json.loads((result.folder / "config.json").read_text())
    assert cfg["quantization"]["bits"] == 8 and cfg["quantization"]["group_size"] == 32
    assert not any(isinstance(v, dict) for v in cfg["quantization"].values())  # one width now
    ours, _ = mlxmodels.load(tiny_gguf)
    again, _ = mlxmodels.load(result.folder)
    theirs, _ = mlx_lm_load(result.folder)
    ids = [1, 260, 262, 114, 261, 2, 75, 104]
    got = logits(again, ids)
    assert np.abs(logits(theirs, ids) - got).max() < 1e-4
    # 8-bit groups of 32 hold the 4- and 8-bit values they came from closely (not exactly: new scales)
    want = logits(ours, ids)
    assert 0 < np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_report_refuses_gguf(tiny_gguf, tmp_path):
    from quantize import report
    from quantize.convert import ConvertError

    with pytest.raises(ConvertError, match="GGUF file"):
        report.check_source(tiny_gguf)


def test_smollm2_converts_for_mlx_lm(smollm2, tmp_path):  # noqa: F811 (fixture)
    result = convert(smollm2, tmp_path / "smollm2")
    ours, tok = mlxmodels.load(smollm2)
    theirs, their_tok = mlx_lm_load(result.folder)
    _, folder_tok = mlxmodels.load(result.folder)
    check_tokenizers(tok, folder_tok, their_tok)
    for text in TEXTS[:2]:
        _, ids = chat_ids(tok, text)
        want = logits(ours, ids)
        # float32 throughout; the two models differ only in the order of their sums (measured 1.1e-4 at ~38)
        assert np.abs(logits(theirs, ids) - want).max() < 5e-4


def test_fused_gate_up_experts_convert(tmp_path):
    """A GGUF with experts fused as convert's --fuse-gate-up-exps writes them converts: kept, the folder holds the
    loader's very weights (gate and up apart); requantized to 8 bits, the logits stay close to the file's."""
    from mlx.utils import tree_flatten

    from tests.formats.test_gguf_archs import CASES, build_hf, export

    arch, model_type, cfg, _ = CASES["deepseek_v3"]
    hf = build_hf(model_type, tmp_path / "hf", seed=3, **dict(cfg, first_k_dense_replace=0))
    fused = export(hf, arch, tmp_path / "hf", tmp_path / "fused.gguf", quantize=True, fuse_gate_up=True)
    ours, _ = mlxmodels.load(fused, dtype="float32")
    kept, _ = mlxmodels.load(convert(fused, tmp_path / "kept").folder, dtype="float32")
    want, got = dict(tree_flatten(ours.parameters())), dict(tree_flatten(kept.parameters()))
    assert "model.layers.0.mlp.switch_mlp.up_proj.scales" in got
    assert got.keys() == want.keys() and all(mx.array_equal(got[k], want[k]).item() for k in got)
    setting = recipes.Setting.for_mode("affine", bits=8, group_size=32)
    again, _ = mlxmodels.load(convert(fused, tmp_path / "q8", Options(quantize=True, setting=setting)).folder,
                              dtype="float32")
    ids = [1, 5, 9, 30, 77, 100, 3]
    a, b = logits(ours, ids), logits(again, ids)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
