"""`mlxm bench` on a tiny model: every JSON field present and positive, mlx-lm side by side, the PNG plot."""

import json
import struct
import zlib

import numpy as np

from app import cli
from app.bench import METRICS
from app.bench_cmd import format_report
from app.png_plot import line_chart, read_png_size


def bench_json(capsys, *args):
    assert cli.main(["bench", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def check_tool(r, n):
    assert r["dtype"] == "float32" and r["load_s"] > 0 and r["weight_bytes"] > 0
    for m in METRICS:
        assert set(r[m]) == {"median", "min", "max", "mean", "sd"}, m
        assert 0 < r[m]["min"] <= r[m]["median"] <= r[m]["max"], (m, r[m])
        assert r[m]["min"] <= r[m]["mean"] <= r[m]["max"] and r[m]["sd"] >= 0, (m, r[m])
    assert len(r["trials"]) == n and all(t[m] > 0 for t in r["trials"] for m in METRICS)


def test_bench_json_every_field_positive(tiny_folder, capsys):
    r = bench_json(capsys, "-m", tiny_folder, "-p", 32, "-g", 8, "-n", 2)
    assert (r["prompt_tokens"], r["gen_tokens"], r["trials"]) == (32, 8, 2)
    assert set(r["tools"]) == {"ours"} and "ratios" not in r
    check_tool(r["tools"]["ours"], 2)


def test_bench_compare_mlx_lm(tiny_folder, capsys):
    r = bench_json(capsys, "-m", tiny_folder, "-p", 32, "-g", 8, "-n", 2, "--compare", "mlx-lm")
    check_tool(r["tools"]["ours"], 2)
    check_tool(r["tools"]["mlx-lm"], 2)
    for m in METRICS:
        assert abs(r["ratios"][m] - r["tools"]["ours"][m]["median"] / r["tools"]["mlx-lm"][m]["median"]) < 1e-9
    out = format_report(r)  # what the command prints without --json
    assert "| mlxmodels |" in out and "| mlx-lm |" in out and "mlxmodels / mlx-lm: prompt" in out


def test_bench_plot(tiny_folder, tmp_path, capsys):
    png = tmp_path / "speed.png"
    r = bench_json(capsys, "-m", tiny_folder, "-p", 64, "-g", 4, "-n", 1, "--plot", png)
    assert [p["context"] for p in r["plot"]["points"]] == [8, 16, 32, 64]
    assert all(p["ours"]["prompt_tps"] > 0 and p["ours"]["generation_tps"] > 0 for p in r["plot"]["points"])
    assert read_png_size(png.read_bytes()) == (1000, 440)


def test_bench_mistakes(tmp_path, tiny_folder, capsys):
    assert cli.main(["bench", "-m", str(tmp_path / "nope")]) == 1
    assert "not a model folder" in capsys.readouterr().err
    assert cli.main(["bench", "-m", str(tiny_folder), "--plot", str(tmp_path / "x.jpg")]) == 1
    assert "ending in .png" in capsys.readouterr().err


def decode_png(data: bytes) -> np.ndarray:
    """Enough of a PNG reader for our own files (8-bit RGB, filter 0)."""
    w, h = read_png_size(data)
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(kind + body)
        if kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, 1 + 3 * w)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, 3)


def test_png_writer_draws_the_lines():
    data = line_chart("T", [64, 128, 256], [("A", {"ours": [1, 2, 3], "mlx-lm": [3, 2, 1]})], "X", 400, 300)
    px = decode_png(data)
    assert px.shape == (300, 400, 3)
    blue = (px == np.array([31, 119, 180], dtype=np.uint8)).all(-1)
    orange = (px == np.array([255, 127, 14], dtype=np.uint8)).all(-1)
    assert blue.sum() > 200 and orange.sum() > 200
    # ours rises left to right, mlx-lm falls: compare the mean row of each colour in the left and right halves
    rows = np.arange(300)[:, None]
    left, right = np.arange(400)[None, :] < 200, np.arange(400)[None, :] >= 200
    mean_row = lambda mask: (rows * mask).sum() / mask.sum()  # noqa: E731
    assert mean_row(blue & right) < mean_row(blue & left)
    assert mean_row(orange & right) > mean_row(orange & left)
