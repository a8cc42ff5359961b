"""`mlxm bench` for people who compare (issue 15 item 6): llama-bench-style sweeps (-p 8,16 -g 4: every pair runs),
--output md|csv|json, mean ± sd beside the median, mlxmodels named as such, versions in the JSON, a line per
finished pair on a terminal, and a note with an estimate before a long --plot sweep. Tiny model, tiny sizes."""

import csv
import io
import json

import pytest

from app import bench_cmd, cli
from app.bench import METRICS

SWEEP = ["-p", "8,16", "-g", "4", "-n", "2"]


def bench(capsys, folder, *args):
    code = cli.main(["bench", "-m", str(folder), *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def test_sweep_json_has_a_run_per_pair_every_trial_and_the_versions(tiny_folder, capsys):
    code, out, err = bench(capsys, tiny_folder, *SWEEP, "-g", "4,5", "--output", "json")
    assert code == 0 and err == []
    r = json.loads(out)
    assert [(x["prompt_tokens"], x["gen_tokens"]) for x in r["runs"]] == [(8, 4), (8, 5), (16, 4), (16, 5)]
    for run in r["runs"]:
        ours = run["tools"]["ours"]
        assert len(ours["trials"]) == 2
        for m in METRICS:
            s = ours[m]
            assert s["min"] <= s["mean"] <= s["max"] and s["sd"] >= 0 and s["min"] <= s["median"] <= s["max"], m
    assert r["trials"] == 2 and r["model"]
    v = r["versions"]
    assert {"mlxmodels", "mlx", "python", "os", "chip"} <= set(v) and "mlx-lm" not in v
    assert all(isinstance(x, str) and x for x in v.values()), v


def test_one_pair_keeps_the_single_run_shape_and_gains_the_versions(tiny_folder, capsys):
    code, out, _ = bench(capsys, tiny_folder, "-p", 8, "-g", 4, "-n", 2, "--json")
    r = json.loads(out)
    assert code == 0 and "runs" not in r and (r["prompt_tokens"], r["gen_tokens"]) == (8, 4)
    assert "ours" in r["tools"] and "mlx" in r["versions"]


def test_markdown_table_has_a_row_per_pair_with_mean_sd_and_median(tiny_folder, capsys):
    code, out, err = bench(capsys, tiny_folder, *SWEEP)
    assert code == 0 and err == []  # not a terminal: no progress lines
    rows = [line for line in out.splitlines() if line.startswith("| p")]
    assert [row.split(" | ")[:2] for row in rows] == [["| p8 g4", "mlxmodels"], ["| p16 g4", "mlxmodels"]]
    head = out.splitlines()[2]
    assert "| prompt tok/s | prompt median [min-max] | gen tok/s | gen median [min-max] |" in head
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 11 and "±" in cells[3] and "±" in cells[5]
        assert "[" in cells[4] and "[" in cells[6]
    assert "ours" not in out


def test_csv_parses_one_row_per_pair_and_tool(tiny_folder, capsys):
    code, out, err = bench(capsys, tiny_folder, *SWEEP, "--output", "csv")
    assert code == 0 and err == []
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["prompt_tokens"], r["gen_tokens"], r["tool"]) for r in rows] == [("8", "4", "mlxmodels"),
                                                                                 ("16", "4", "mlxmodels")]
    for r in rows:
        assert r["trials"] == "2"
        for m in METRICS:
            assert float(r[f"{m}_min"]) <= float(r[f"{m}_mean"]) <= float(r[f"{m}_max"]) and float(r[f"{m}_sd"]) >= 0


def test_compared_sweep_names_both_tools_and_records_mlx_lm(tiny_folder, capsys):
    code, out, _ = bench(capsys, tiny_folder, "-p", "8,16", "-g", 4, "-n", 1, "--compare", "mlx-lm", "--json")
    r = json.loads(out)
    assert code == 0 and [set(x["tools"]) for x in r["runs"]] == [{"ours", "mlx-lm"}] * 2
    assert all("ratios" in x for x in r["runs"]) and r["versions"]["mlx-lm"]
    md = bench_cmd.format_report(r)
    for p in (8, 16):
        for tool in ("mlxmodels", "mlx-lm", "**mlxmodels ÷ mlx-lm**"):
            assert f"| p{p} g4 | {tool} |" in md, md
        assert f"mlxmodels / mlx-lm at p{p} g4: prompt" in md
    assert {r["tool"] for r in csv.DictReader(io.StringIO(bench_cmd.format_csv(r)))} == {"mlxmodels", "mlx-lm"}


def test_a_line_per_finished_pair_on_a_terminal(tiny_folder, capsys, monkeypatch):
    import app.progress

    monkeypatch.setattr(app.progress, "on_terminal", lambda: True)
    code, _, err = bench(capsys, tiny_folder, *SWEEP)
    done = [line.split("\x1b[2K")[-1] for line in err if "] p" in line]
    assert code == 0
    assert done[0].startswith("[1/2] p8 g4: mlxmodels ") and "left)" in done[0], done
    assert done[1].startswith("[2/2] p16 g4: mlxmodels ") and "so far)" in done[1], done


def test_plot_warns_with_an_estimate_before_a_long_sweep(tiny_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_cmd, "PLOT_WARN_S", 0.0)  # every sweep is "long" here
    code, out, err = bench(capsys, tiny_folder, "-p", 64, "-g", 4, "-n", 1, "--plot", tmp_path / "a.png", "--json")
    assert code == 0 and [p["context"] for p in json.loads(out)["plot"]["points"]] == [8, 16, 32, 64]
    assert len(err) == 1, err
    assert err[0].startswith("mlxm: note: --plot runs 3 more context length(s) (8, 16, 32), about "), err
    assert "estimated from the p64 g4 run" in err[0]


def test_plot_of_a_sweep_uses_its_own_lengths_and_runs_nothing_more(tiny_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_cmd, "PLOT_WARN_S", 0.0)
    started, running = [], bench_cmd._running
    monkeypatch.setattr(bench_cmd, "_running",
                        lambda folders, p, *a, **k: started.append(p) or running(folders, p, *a, **k))
    code, out, err = bench(capsys, tiny_folder, *SWEEP, "--plot", tmp_path / "b.png", "--json")
    r = json.loads(out)
    assert started == [8, 16]  # the sweep's own two pairs, nothing more for the plot
    assert code == 0 and err == [] and [p["context"] for p in r["plot"]["points"]] == [8, 16]
    assert r["plot"]["points"][1]["ours"]["prompt_tps"] == r["runs"][1]["tools"]["ours"]["prompt_tps"]["median"]


def test_plot_estimate_counts_load_warm_up_and_trial():
    run = {"gen_tokens": 11, "tools": {"ours": {"load_s": 2.0, "prompt_tps": {"median": 100.0},
                                                "generation_tps": {"median": 10.0}}}}
    assert bench_cmd.plot_estimate(run, [100, 200]) == pytest.approx((2 + 2 * (1 + 1)) + (2 + 2 * (2 + 1)))


@pytest.mark.parametrize("flag, value, needle", [
    ("-p", "0", "invalid value '0'"), ("-p", "8,0", "invalid value '0'"), ("-p", "=-8", "invalid value '-8'"),
    ("-p", "x", "invalid value 'x'"), ("-p", "8,,16", "invalid list '8,,16'"), ("-p", "1.5", "invalid value '1.5'"),
    ("-g", "4,1", "invalid value '1' (expected a whole number >= 2)"), ("-g", "", "invalid list ''"),
])
def test_bad_lists_are_refused_in_one_line(capsys, flag, value, needle):
    arg = [flag + value] if value.startswith("=") else [flag, value]
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", *arg])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(err) == 1 and needle in err[0], err


def test_json_and_another_output_refused(capsys):
    assert cli.main(["bench", "--json", "--output", "csv"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--json and --output csv" in err[0], err


def test_a_sweep_past_the_context_is_refused_before_any_work(tiny_folder, capsys, monkeypatch):
    monkeypatch.setattr(bench_cmd, "measure", lambda *a, **k: pytest.fail("the benchmark ran"))
    assert cli.main(["bench", "-m", str(tiny_folder), "-p", "8,1000000", "-g", "4"]) == 1
    assert "-p 1000000 and -g 4 make 1,000,004 tokens, past the model's context" in capsys.readouterr().err
