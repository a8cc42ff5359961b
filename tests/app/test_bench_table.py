"""bench's table (app/bench.py): peak memory in the unit that fits its median (app/sizes.py), never "0.00 GB"."""

from app import bench


def summary(peak_gb):
    s = {m: {"median": 1.0, "min": 1.0, "max": 1.0} for m in bench.METRICS}
    s["peak_memory_gb"] = {"median": peak_gb, "min": peak_gb * 0.9, "max": peak_gb * 1.1}
    return s


def test_peak_memory_of_a_tiny_model_prints_in_mb():
    out = bench.table([{"setting": "p8 g4", "tool": "ours", "dtype": "float32", "summary": summary(0.0123)}])
    assert "| peak memory |" in out.splitlines()[0]
    assert "| 12.3 [11.1-13.5] MB |" in out, out


def test_peak_memory_of_a_large_model_prints_in_gb():
    out = bench.table([{"setting": "p8 g4", "tool": "ours", "dtype": "bfloat16", "summary": summary(17.5)}])
    assert "| 17.5 [15.8-19.2] GB |" in out, out
