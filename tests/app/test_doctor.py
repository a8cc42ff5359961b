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
    from metal_kernels.quantized import max_rows

    full = kernel_table.mac_shapes()
    by_entry = {e: [s for s in full if s.entry == e] for e in ("qmv", "qmv_swiglu", "paged_attention", "paged_mla")}
    for entry, (N, K) in (("qmv", (4096, 14336)), ("qmv_swiglu", (14336, 4096))):
        assert [s.args()[0].shape[0] for s in by_entry[entry]] == [m for m in (1, 2, 4, 8, 16) if m <= max_rows(K, N)]
    assert sorted(s.args()[4].tolist()[0] for s in by_entry["paged_attention"]) == [2048] * 2 + [8192] * 2 + [32768] * 2
    assert sorted({s.args()[0].shape[1] for s in by_entry["paged_mla"]}) == [16, 128]
    for quick in (kernel_table.mac_shapes(True), kernel_table.emulator_shapes(True)):
        assert [s.entry for s in quick] == list(by_entry)
    assert {s.entry for s in kernel_table.emulator_shapes()} == set(by_entry)
    w = by_entry["qmv"][0].args()[1]
    assert by_entry["qmv"][0].bytes_read == w.size * 4 + 2 * 4096 * 14336 // 64 * 2  # packed weights + scales, biases


def _quick_shapes(monkeypatch):
    """Under simulated Metal the doctor checks the Mac's shapes; the emulator's small ones stand in for them."""
    monkeypatch.setattr(kernel_table, "mac_shapes", lambda quick=False: kernel_table.emulator_shapes(True))


def _broken(launch):
    raise RuntimeError("planted: [metal_kernel] Unable to build metal library from source")


def _zeros(launch):  # launches fine, wrong numbers
    import mlx.core as mx

    return [mx.zeros(s, d) for s, d in zip(launch.output_shapes, launch.output_dtypes)]


@pytest.mark.parametrize("runner, reason", [(_broken, "planted"), (_zeros, "max |kernel - built-in|")])
def test_failing_kernels_show_fail_and_the_builtin(runner, reason, tmp_path, monkeypatch, capsys):
    from metal_kernels.testing import simulate_metal

    _quick_shapes(monkeypatch)
    report = tmp_path / "r.json"
    with simulate_metal(runner, cache_dir=tmp_path / "cache", mode="auto"):
        assert cli.main(["doctor", "--quick", "--json", str(report)]) == 0
        first = capsys.readouterr()
        assert cli.main(["doctor", "--quick"]) == 0  # a second run sees the first one's verdicts
        second = capsys.readouterr().out
    assert "Traceback" not in first.err
    rows = json.loads(report.read_text())["kernels"]["rows"]
    assert [r["entry"] for r in rows] == ["qmv", "qmv_swiglu", "paged_attention", "paged_mla"]
    for r in rows:
        assert r["selftest"] == "fail" and r["pick"] == "builtin" and reason in r["reason"], r
        assert r["kernel_us"] is None
    table = first.out[first.out.index("\nkernel ") + 1:].split("\n\n")[0].splitlines()
    at = table[0].index("self-test")
    assert [line[at:].split()[0] for line in table[1::2]] == ["fail"] * 4  # each row, then its reason
    assert all(line.split()[-1] == "builtin" for line in table[1::2])
    assert all(reason in line for line in table[2::2])
    assert "4 failed" in second and second.count("  failed: ") == 4


@pytest.mark.skipif(not kernel_table.emulator_available(), reason="the emulator needs Linux and g++")
def test_emulated_kernels_pass_and_pick_the_faster(tmp_path, capsys):
    """On Linux --emulate runs every kernel's self-test in the emulator, labelled as such; the pick is the faster
    of the two times (meaningless here, but it must be the one auto would take)."""
    report = tmp_path / "r.json"
    assert cli.main(["doctor", "--quick", "--emulate", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "not used: MLX runs on its CPU backend" in out and "correctness only, times meaningless" in out
    k = json.loads(report.read_text())["kernels"]
    assert k["backend"] == "emulator" and len(k["rows"]) == 4
    for r in k["rows"]:
        if r["entry"].startswith("paged"):  # their built-in computes in float32: the emulated kernel must match it
            assert r["selftest"] == "pass", r
        if r["selftest"] == "pass":
            assert r["pick"] == ("kernel" if r["kernel_us"] < r["builtin_us"] else "builtin")
            assert r["kernel_GBps"] > 0 and r["builtin_GBps"] > 0
        else:
            assert r["pick"] == "builtin" and r["reason"], r


def test_a_shape_too_large_for_the_gpu_is_skipped_in_its_row():
    class Never:
        def check(self, entry, args):
            raise AssertionError("a shape over the budget must not be checked")

    big, small = kernel_table.attention(8, 32768), kernel_table.qmv(1, 64, 512)
    rows = kernel_table.check_all(Never(), [big], budget=3 * big.bytes_read)["rows"]
    assert rows[0]["error"].startswith("skipped: it needs about 4.29 GB")
    assert "skipped" in kernel_table.format_rows(rows)

    class Echo:
        def check(self, entry, args):
            return {"entry": entry, "selftest": "pass", "kernel_us": 1.0, "builtin_us": 2.0, "pick": "kernel"}

    row = kernel_table.check_all(Echo(), [small], budget=10 * small.bytes_read)["rows"][0]
    assert row["kernel_GBps"] == pytest.approx(small.bytes_read / 1e3) and row["pick"] == "kernel"
