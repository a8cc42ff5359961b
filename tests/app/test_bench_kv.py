"""`mlxm bench --kv-bits --kv-group-size --quantized-kv-start --max-kv-size`: the options reach both tools' workers
(ours: make_cache; mlx-lm: its QuantizedKVCache as its generate_step converts, its RotatingKVCache for the bound),
the report names them, and the KV bytes it reports shrink as they should; mistakes are one line."""

import json

import pytest

from app import cli
from app.bench_cmd import format_report
from tests.app.tiny import build_tiny


@pytest.fixture(scope="module")
def wide_folder(tmp_path_factory):
    """The tiny Llama with a head dim of 32, the least kv_group_size takes."""
    return build_tiny(tmp_path_factory.mktemp("wide"), hidden_size=64, num_attention_heads=2, num_key_value_heads=1)


def bench(capsys, folder, *flags):
    assert cli.main(["bench", "-m", str(folder), "-p", "64", "-g", "4", "-n", "1", "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def kv_bytes(report, tool="ours"):
    return report["tools"][tool]["kv_bytes"]


def test_kv_bits_reach_both_tools(wide_folder, capsys):
    """8-bit rows of a 32-wide float32 head: 32 code bytes + a float32 scale and bias per group of 32 = 40 of 128
    bytes, in ours and in mlx-lm alike (both allocate in steps of 256 tokens)."""
    float_kv = bench(capsys, wide_folder, "--compare", "mlx-lm")
    r = bench(capsys, wide_folder, "--kv-bits", "8", "--kv-group-size", "32", "--compare", "mlx-lm")
    assert r["cache"] == {"kv_bits": 8, "kv_group_size": 32, "quantized_kv_start": 0}
    assert "peer_failed" not in r and "cache" not in float_kv
    for tool in ("ours", "mlx-lm"):
        assert kv_bytes(r, tool) * 128 == kv_bytes(float_kv, tool) * 40, tool
    assert "8-bit KV (groups of 32)" in format_report(r)
    assert "KV cache arrays after a trial: mlxmodels " in format_report(r)


def test_quantized_kv_start_and_max_kv_size(wide_folder, capsys):
    """Started past the run's 68 tokens the cache stays float; started at 32 it is converted; bounded to 16 tokens
    it holds fewer bytes than the 68 tokens' (mlx-lm cannot bound a Llama's cache: named, ours reported)."""
    float_kv = kv_bytes(bench(capsys, wide_folder))
    late = bench(capsys, wide_folder, "--kv-bits", "4", "--kv-group-size", "32", "--quantized-kv-start", "100")
    early = bench(capsys, wide_folder, "--kv-bits", "4", "--kv-group-size", "32", "--quantized-kv-start", "32")
    assert kv_bytes(late) == float_kv and kv_bytes(early) < float_kv / 4
    assert "float for the first 32 tokens" in format_report(early)
    bounded = bench(capsys, wide_folder, "--max-kv-size", "16", "--kv-bits", "8", "--kv-group-size", "32",
                    "--compare", "mlx-lm")
    assert bounded["cache"]["max_kv_size"] == 16 and kv_bytes(bounded) < kv_bytes(early)
    assert "ignores max_kv_size" in bounded["peer_failed"]["mlx-lm"]  # mlx-lm's Llama would time an unbounded cache
    assert "KV bounded to 16 tokens" in format_report(bounded)


def test_kv_mistakes_are_one_line(wide_folder, capsys):
    assert cli.main(["bench", "-m", str(wide_folder), "-p", "16", "-g", "2", "-n", "1", "--kv-bits", "8"]) == 1
    err = capsys.readouterr().err
    assert "kv_group_size=64 does not divide" in err and err.count("\n") == 1
    assert cli.main(["bench", "-m", str(wide_folder), "--quantized-kv-start", "8"]) == 1
    assert "add --kv-bits" in capsys.readouterr().err
    for bad in (["--kv-bits", "3"], ["--kv-group-size", "48"], ["--max-kv-size", "4"]):
        with pytest.raises(SystemExit) as e:
            cli.parser().parse_args(["bench", *bad])
        assert e.value.code == 2 and bad[0] in capsys.readouterr().err
