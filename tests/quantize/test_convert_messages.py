"""What `mlxm convert` tells the user: sizes in the unit that fits (app/sizes.py), never "0.00 GB"."""

import re
from types import SimpleNamespace

import pytest

from quantize import convert as convert_module
from tests.oracle import build_tiny_llama
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
