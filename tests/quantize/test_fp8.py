"""FP8 block-scaled checkpoints: our dequantization equals an independent NumPy reference bit for bit (ragged
block edges included), and a synthetic DeepSeek-style FP8 checkpoint converts to exactly the reference model."""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest

import mlxmodels
from quantize import fp8
from quantize.convert import Options, convert
from mlxmodels.formats.safetensors import INDEX, save_file
from tests.oracle import build_hf


def e4m3_reference(bits: np.ndarray) -> np.ndarray:
    """E4M3 (fn) by hand: sign, 4-bit exponent with bias 7, 3-bit mantissa; exponent 0 is subnormal; S.1111.111 NaN."""
    b = bits.astype(np.int64)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp, man = (b >> 3) & 0xF, b & 0x7
    value = np.where(exp == 0, man / 8.0 * 2.0**-6, (1 + man / 8.0) * 2.0 ** (exp - 7))
    value = np.where((b & 0x7F) == 0x7F, np.nan, value)
    return (sign * value).astype(np.float32)


def dequant_reference(bits: np.ndarray, scale_inv: np.ndarray, block) -> np.ndarray:
    bm, bn = block
    m, n = bits.shape
    w = e4m3_reference(bits)
    rows = np.arange(m) // bm
    cols = np.arange(n) // bn
    return (w * scale_inv.astype(np.float32)[rows[:, None], cols[None, :]]).astype(np.float32)


def test_every_e4m3_value_decodes_exactly():
    bits = np.arange(256, dtype=np.uint8)
    ours = np.array(fp8.dequantize(mx.array(bits)[None], mx.array(np.ones((1, 1), np.float32)), (1, 256)))[0]
    ref = e4m3_reference(bits)
    finite = ~np.isnan(ref)
    np.testing.assert_array_equal(ours[finite], ref[finite])
    assert ref[0x7E] == 448.0 and ref[0x01] == 2.0**-9  # the largest normal and the smallest subnormal


@pytest.mark.parametrize("shape,block", [((300, 200), (128, 128)), ((128, 256), (128, 128)), ((5, 7), (2, 3)),
                                         ((1, 130), (128, 128))])
def test_block_dequantization_matches_numpy_with_ragged_edges(shape, block):
    rng = np.random.default_rng(shape[0])
    bits = rng.integers(0, 256, shape, dtype=np.uint8)
    bits[(bits & 0x7F) == 0x7F] = 0x3F  # no NaNs
    grid = (-(-shape[0] // block[0]), -(-shape[1] // block[1]))
    scale = (rng.random(grid, dtype=np.float32) * 1e-2 + 1e-4).astype(np.float32)
    got = fp8.dequantize(mx.array(bits), mx.array(scale), block)
    want = dequant_reference(bits, scale, block)
    assert got.dtype == mx.float32
    np.testing.assert_array_equal(np.array(got), want)  # exact: one float32 rounding, as NumPy
    # and cast to bfloat16 as the converter does by default
    np.testing.assert_array_equal(np.array(got.astype(mx.bfloat16).astype(mx.float32)),
                                  np.array(mx.array(want).astype(mx.bfloat16).astype(mx.float32)))


def test_scale_grid_that_does_not_fit_is_a_clear_error():
    with pytest.raises(fp8.FP8Error, match=r"scale shape \(2, 2\) does not fit .* \(300, 200\) .*"
                                           r"\(expected \(3, 2\)\)"):
        fp8.dequantize(mx.zeros((300, 200), dtype=mx.uint8), mx.ones((2, 2)), (128, 128))


CFG = dict(hidden_size=80, intermediate_size=144, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
BLOCK = (32, 32)  # 80 = 2*32 + 16 and 144 = 4*32 + 16: ragged edges in both directions


def to_fp8(w: np.ndarray, block):
    """A float weight -> (E4M3 bits, float32 scale_inv per block), as an FP8 checkpoint stores it."""
    m, n = w.shape
    bm, bn = block
    grid = (-(-m // bm), -(-n // bn))
    scale = np.zeros(grid, np.float32)
    for i in range(grid[0]):
        for j in range(grid[1]):
            scale[i, j] = np.abs(w[i * bm:(i + 1) * bm, j * bn:(j + 1) * bn]).max() / 448.0
    full = scale[np.arange(m)[:, None] // bm, np.arange(n)[None, :] // bn]
    bits = np.array(mx.to_fp8(mx.array(w / full)))
    return bits, scale


@pytest.fixture(scope="module")
def fp8_checkpoint(tmp_path_factory):
    """A Llama whose projections are F8_E4M3 + weight_scale_inv (embeddings, norms, head float, as DeepSeek-V3),
    sharded so that a weight and its scales sit in different files; and the same model with the reference
    dequantized weights in float32."""
    root = tmp_path_factory.mktemp("fp8")
    src, ref = root / "fp8", root / "ref"
    build_hf("llama", src, **CFG)
    shutil.copytree(src, ref)
    weights = {k: np.array(v) for k, v in mx.load(str(src / "model.safetensors")).items()}
    (src / "model.safetensors").unlink()
    shards, reference = [{}, {}], {}
    for name, w in sorted(weights.items()):
        if name.endswith("proj.weight"):
            bits, scale = to_fp8(w, BLOCK)
            shards[0][name] = (bits, "F8_E4M3")
            shards[1][name + "_scale_inv"] = scale
            reference[name] = dequant_reference(bits, scale, BLOCK)
        else:
            shards[len(name) % 2][name] = w
            reference[name] = w
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for f, shard in zip(files, shards):
        save_file(src / f, shard)
    (src / INDEX).write_text(json.dumps({"weight_map": {n: f for f, s in zip(files, shards) for n in s}}))
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": list(BLOCK)}
    cfg["torch_dtype"] = "bfloat16"
    (src / "config.json").write_text(json.dumps(cfg))
    save_file(ref / "model.safetensors", reference)
    return src, ref


def logits(folder):
    model, _ = mlxmodels.load(folder, dtype="float32")
    return np.array(model(mx.array(np.arange(24)[None] % 256)))


def test_fp8_checkpoint_converts_to_the_reference_model(fp8_checkpoint, tmp_path):
    src, ref = fp8_checkpoint
    convert(src, tmp_path / "f32", Options(dtype="float32"))
    out = tmp_path / "f32"
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and "quantization" not in cfg and cfg["torch_dtype"] == "float32"
    got = mx.load(str(out / "model.safetensors"))
    assert not any(k.endswith("_scale_inv") for k in got)
    want = mx.load(str(ref / "model.safetensors"))
    for name in want:
        np.testing.assert_array_equal(np.array(got[name]), np.array(want[name]), err_msg=name)
    np.testing.assert_array_equal(logits(out), logits(ref))


def test_fp8_checkpoint_defaults_to_bfloat16(fp8_checkpoint, tmp_path):
    src, ref = fp8_checkpoint
    convert(src, tmp_path / "bf16", Options())
    got = mx.load(str(tmp_path / "bf16" / "model.safetensors"))
    assert {v.dtype for v in got.values()} == {mx.bfloat16}
    name = "model.layers.1.mlp.down_proj.weight"
    np.testing.assert_array_equal(np.array(got[name].astype(mx.float32)),
                                  np.array(mx.load(str(ref / "model.safetensors"))[name].astype(mx.bfloat16)
                                           .astype(mx.float32)))
    err = np.abs(logits(tmp_path / "bf16") - logits(ref)).max()
    assert 0 < err < 0.02 * np.abs(logits(ref)).max()  # bfloat16 rounding only


def test_report_refuses_an_fp8_reference_before_converting(fp8_checkpoint, tmp_path, capsys):
    from app.cli import main

    src, _ = fp8_checkpoint
    (tmp_path / "text.txt").write_text("hello world")
    code = main(["convert", str(src), str(tmp_path / "out"), "-q", "--report", str(tmp_path / "text.txt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "--report needs a float source" in err[0] and "is FP8" in err[0]
    assert not (tmp_path / "out").exists()
