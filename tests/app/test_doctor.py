"""`mlxm doctor`: the system part and the "not used" reason off a Metal GPU, the JSON report, its refusals, and the
kernel table under simulated Metal (a runner that fails, the emulator's that works)."""

import json
import os

import pytest

from app import cli, doctor, kernel_table
from tests.app.test_cli import mlxm, one_line_error


def test_linux_report_and_json(tmp_path):
    """The real entry point, as a user runs it: system part, why the kernels are not used, a valid JSON file."""
    report = tmp_path / "report.json"
    r = mlxm("doctor", "--json", report)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    for needle in ("python:", "mlx:", "memory:", "metal:           not available", "default device:",
                   "not used: MLX runs on its CPU backend here", "the kernels need a Metal GPU"):
        assert needle in r.stdout, r.stdout
    data = json.loads(report.read_text())
    assert data["system"]["metal_available"] is False
    assert data["system"]["memory_bytes"] > 0
    assert data["kernels"]["used"] is False and "CPU backend" in data["kernels"]["reason"]
    assert not data["kernels"].get("rows")  # nothing checked without --emulate
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left beside it


@pytest.mark.parametrize("where", ["missing folder", "a folder", "a link"])
def test_bad_json_path_is_one_line(tmp_path, where, capsys):
    path = {"missing folder": tmp_path / "nope" / "r.json", "a folder": tmp_path, "a link": tmp_path / "l.json"}[where]
    if where == "a link":
        os.symlink(tmp_path / "target.json", path)
    assert cli.main(["doctor", "--json", str(path)]) == 1
    err = capsys.readouterr().err
    one_line_error(err, "--json")
    assert not (tmp_path / "target.json").exists()


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["doctor", "--help"])
    assert e.value.code == 0
    assert "usage: mlxm doctor" in capsys.readouterr().out


def test_a_failing_probe_is_one_line_in_its_row(monkeypatch, capsys):
    def broken():
        raise OSError("sysctl went away")

    monkeypatch.setattr(doctor, "_chip", broken)
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "chip:            unknown (OSError: sysctl went away)" in out


def test_shapes_follow_the_issue():
    """Rows 1-16 capped at the kernel's limit, 2k/8k/32k at batch 1 and 8, MLA with 16 and 128 heads; --quick one
    shape per kernel; the emulator's shapes cover the same entries."""
    from metal_kernels.quantized import MAX_ROWS

    full = kernel_table.mac_shapes()
    by_entry = {e: [s for s in full if s.entry == e] for e in ("qmv", "qmv_swiglu", "paged_attention", "paged_mla")}
    assert len(by_entry["qmv"]) == len([m for m in (1, 2, 4, 8, 16) if m <= MAX_ROWS])
    assert [s.args()[0].shape[0] for s in by_entry["qmv_swiglu"]] == [m for m in (1, 2, 4, 8, 16) if m <= MAX_ROWS]
    assert sorted(s.args()[4].tolist()[0] for s in by_entry["paged_attention"]) == [2048] * 2 + [8192] * 2 + [32768] * 2
    assert sorted({s.args()[0].shape[1] for s in by_entry["paged_mla"]}) == [16, 128]
    for quick in (kernel_table.mac_shapes(True), kernel_table.emulator_shapes(True)):
        assert [s.entry for s in quick] == list(by_entry)
    assert {s.entry for s in kernel_table.emulator_shapes()} == set(by_entry)
    w = by_entry["qmv"][0].args()[1]
    assert by_entry["qmv"][0].bytes_read == w.size * 4 + 2 * 4096 * 14336 // 64 * 2  # packed weights + scales, biases
