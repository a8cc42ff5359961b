"""What `mlxm convert` tells the user: sizes in the unit that fits (app/sizes.py), never "0.00 GB"; with -q, the
weights it left float and why (one line), or a refusal when that is all of them; --report's bits per weight as
stored on disk; and --dtype's help, which must say what load.compute_dtype does."""

import math
import re
from types import SimpleNamespace

import pytest

from mlxmodels.formats.safetensors import Checkpoint
from quantize import convert as convert_module
from tests.oracle import TINY_LLAMA, build_hf, build_tiny_llama, save_byte_tokenizer
from tests.quantize.test_cli import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny"))


def test_sizes_of_a_small_model_print_in_kb_or_mb(capsys, tiny, tmp_path):
    code, out, err = run_cli(capsys, tiny, tmp_path / "out")
    assert code == 0, err
    assert "0.00" not in out and " GB" not in out, out
    assert re.search(r"converting .*: \d+ groups, [\d.]+ (KB|MB) -> [\d.]+ (KB|MB)", out), out
    assert re.search(r"wrote .*: \d+ tensors, [\d.]+ (KB|MB) in 1 shard", out), out


def test_disk_space_error_gives_both_sizes_in_fitting_units(capsys, tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(convert_module.shutil, "disk_usage", lambda p: SimpleNamespace(free=10_000, total=1, used=1))
    assert_one_line_error(capsys, [tiny, tmp_path / "out"], "and 10.0 KB are free", tmp_path / "out")


# ------------------------------------------------------------------------------------------ convert -q left float


def build(capsys, tmp_path, name, **config):
    folder = tmp_path / name
    build_hf("llama", folder, **{**TINY_LLAMA, **config})
    save_byte_tokenizer(folder)
    capsys.readouterr()  # what saving the model printed
    return folder


def test_quantize_names_what_it_left_float(capsys, tmp_path):
    src = build(capsys, tmp_path, "src", intermediate_size=96)  # down_proj's input, 96, is not a multiple of 64
    code, out, err = run_cli(capsys, src, tmp_path / "out", "-q")
    assert code == 0, err
    notes = [line for line in out.splitlines() if line.startswith("left float")]
    assert notes == ["left float: 2 weight(s) whose input size is not a multiple of the group size 64: "
                     "model.layers.*.mlp.down_proj (x2, input 96)"], out
    names = set(Checkpoint(tmp_path / "out").where)
    assert "model.layers.0.mlp.down_proj.weight" in names and "model.layers.0.mlp.down_proj.scales" not in names
    assert "model.layers.0.mlp.up_proj.scales" in names


def test_quantize_refuses_when_nothing_can_be_quantized(capsys, tmp_path):
    src = build(capsys, tmp_path, "src", hidden_size=96, intermediate_size=160)  # 96 and 160: multiples of 32, not 64
    assert_one_line_error(capsys, [src, tmp_path / "out", "-q"], "nothing to quantize: no weight's input size is a "
                          "multiple of the group size 64 (lm_head (input 96), model.embed_tokens (input 96), ",
                          tmp_path / "out")
    _, _, err = run_cli(capsys, src, tmp_path / "out", "-q")
    assert "model.layers.*.mlp.down_proj (x2, input 160)" in err[0] and err[0].endswith("choose --group-size 32, "
                                                                                        "which divides them"), err


def test_quantize_refusal_without_a_fitting_group_says_to_keep_float(capsys, tmp_path):
    src = build(capsys, tmp_path, "src", hidden_size=48, intermediate_size=80, num_attention_heads=4)
    assert_one_line_error(capsys, [src, tmp_path / "out", "--bits", "8"], "; convert without -q", tmp_path / "out")


# ------------------------------------------------------------------------------------------ --report bits/weight


def test_report_bits_per_weight_are_the_bytes_on_disk(capsys, tmp_path):
    src = build(capsys, tmp_path, "src")
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 4)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, src, out, "-q", "--dtype", "bfloat16", "--report", text,
                                "--report-settings", "4", "--report-tokens", 64, "--report-context", 32)
    assert code == 0, err
    rows = {cells[0]: float(cells[1]) for line in stdout.splitlines()
            if len(cells := [c.strip() for c in line.strip().strip("|").split("|")]) == 4
            and cells[1].replace(".", "").isdigit()}
    params = sum(math.prod(shape) for shape in expected_shapes(src))
    stored = sum(Checkpoint(out).info(n).nbytes for n in Checkpoint(out).where)
    assert rows["4-bit, group 64 (OUT)"] == pytest.approx(8 * stored / params, abs=0.006)
    # a setting built in memory costs what the converter writes (bfloat16 scales), not its float32 compute copy
    assert rows["4-bit, group 64 (in memory)"] == rows["4-bit, group 64 (OUT)"]
    assert rows["float (source, float32 compute)"] == 32.0  # the source is stored in float32


def expected_shapes(folder):
    """The float model's parameter shapes (what 'parameters' counts: a 4-bit weight is one parameter)."""
    from mlx.utils import tree_flatten

    import mlxmodels

    model, _ = mlxmodels.load(folder, dtype="float32")
    return [v.shape for _, v in tree_flatten(model.parameters())]


# ------------------------------------------------------------------------------------------ --dtype's help


def test_dtype_help_tells_the_cpu_policy(capsys, monkeypatch):
    import mlx.core as mx

    import importlib

    from app.cli import main
    from mlxmodels import blas

    load = importlib.import_module("mlxmodels.load")  # the module: mlxmodels.load is also the function

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert ("default: the checkpoint's; on the CPU backend float32 when the weights are quantized or OpenBLAS is "
            "loaded") in help_text
    bf16 = {"w": mx.zeros((2,), dtype=mx.bfloat16)}
    monkeypatch.setattr(mx, "default_device", lambda: mx.cpu)  # the CPU backend, on any machine
    monkeypatch.setattr(blas, "FAST_BLAS", False)
    assert load.compute_dtype(None, bf16) == mx.bfloat16  # the checkpoint's
    assert load.compute_dtype(None, bf16, quantized=True) == mx.float32
    monkeypatch.setattr(blas, "FAST_BLAS", True)
    assert load.compute_dtype(None, bf16) == mx.float32
