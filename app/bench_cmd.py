"""`mlxm bench`: prompt and generation tok/s, time to first token and peak memory (mean ± sd, median and spread
over n trials, for each -p, -g pair of a sweep), optionally beside mlx-lm on the same folder, as a Markdown table,
CSV or JSON, and a PNG of tok/s against context length.

The measuring is app/bench.py's: each tool runs in its own worker process, both are timed by the same loop, and
with --compare the two workers take turns (ABBA) so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import io
import itertools
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from app import signals
from mlxmodels.config import ModelError

DESCRIPTION = """Measure prompt processing and generation speed (tokens per second), time to first token and peak
memory on a random prompt of -p tokens followed by -g greedy tokens, over -n trials after a warm-up. Comma lists
sweep, as llama-bench does (-p 128,512,2048 -g 128: every pair runs, one row per pair and tool; on a terminal each
finished pair leaves a line on stderr). Tok/s print as mean ± standard deviation and median [min-max]; --output
csv|json for scripts (JSON keeps every trial and records the versions, OS and chip). Each tool runs in its own
process. --compare mlx-lm runs mlx-lm on the same folder in the same run (trials interleaved) and prints
mlxmodels / mlx-lm ratios (mlx-lm reads a temporary view of the folder without MTP layers, which it cannot load; if it
still cannot load the model, ours is reported alone with one line saying why); --plot draws tok/s against context
length to a PNG (a sweep's -p values, or -p/8 .. -p for one -p), for the first -g. --kv-bits, --kv-group-size,
--quantized-kv-start and --max-kv-size set the KV cache of every tool (mlx-lm converts to its QuantizedKVCache as its
generate_step does; where it cannot bound or quantize a cache as asked it is left out, saying why); the report names
them and each tool's KV bytes after a trial."""


def length_list(low: int):
    """A whole number >= low, or a comma list of them (a sweep): '128,512,2048' -> [128, 512, 2048], repeats
    dropped. A bad item is refused in one line naming it."""
    from app.flags import number

    def parse(text: str) -> List[int]:
        items = [t.strip() for t in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"invalid list {text!r} (expected whole numbers >= {low} separated by "
                                             "commas, e.g. 128,512)")
        return list(dict.fromkeys(number(int, t, lambda v: v >= low, f"a whole number >= {low}") for t in items))

    return parse


def add_parser(sub, add_model):
    from app.flags import positive_int

    p = sub.add_parser("bench", help="prompt and generation tok/s, time to first token, peak memory",
                       description=DESCRIPTION)
    add_model(p)
    p.add_argument("-p", "--prompt-tokens", type=length_list(1), default=[512], metavar="N[,N...]",
                   help="prompt length, or a comma list to sweep (512; e.g. 128,512,2048)")
    p.add_argument("-g", "--gen-tokens", type=length_list(2), default=[128], metavar="N[,N...]",
                   help="tokens to generate, or a comma list to sweep (128); every -p, -g pair runs")
    p.add_argument("-n", "--trials", type=positive_int, default=5, metavar="N", help="timed trials per pair (5)")
    p.add_argument("--compare", choices=["mlx-lm"], default=None, help="also run mlx-lm and print the ratios")
    p.add_argument("--output", choices=["md", "csv", "json"], default=None,
                   help="what stdout gets: a Markdown table (md, the default), CSV (one row per pair and tool) or "
                        "JSON (every trial, and the versions of the tools, MLX, the OS and the chip)")
    p.add_argument("--json", action="store_true", help="the same as --output json")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="plot tok/s against context length (for the first -g: the -p values of a sweep, or -p/8 .. -p "
                        "for one -p, which runs those lengths too and warns first when that will take long)")
    p.add_argument("--prefill-step", type=positive_int, default=512, metavar="N", help="prefill chunk size (512)")
    p.set_defaults(func=run)
    return p


def run(args) -> None:
    output = "json" if args.json else (args.output or "md")
    if args.json and args.output not in (None, "json"):
        raise ValueError(f"--json and --output {args.output} ask for two formats; give one")
    args.output = output
    previous = signals.catch()  # a kill or a closed terminal stops the workers and removes the logs, as Ctrl-C
    try:
        report = _bench(args)
    except KeyboardInterrupt as e:  # _bench has cleaned up by now
        print(f"mlxm: interrupted by {signals.name(e)}: the benchmark stopped, its worker processes were ended and "
              "its temporary files removed", file=sys.stderr)
        sys.exit(signals.exit_status(e))
    finally:
        signals.restore(previous)
    print(json.dumps(report, indent=2) if output == "json" else
          format_csv(report) if output == "csv" else format_report(report), end="" if output == "csv" else "\n")
    if report.get("peer_view"):
        print(f"mlxm: note: mlx-lm ran on a view of the folder without its {report['peer_view']} tensor(s) of "
              "layers past num_hidden_layers (MTP modules), which it cannot load", file=sys.stderr)
    for tool, why in report.get("peer_failed", {}).items():
        print(f"mlxm: note: --compare {tool} left out: {why}; the table has mlxmodels's results alone",
              file=sys.stderr)


def cache_options(args) -> dict:
    """make_cache's options from --kv-bits, --kv-group-size, --quantized-kv-start and --max-kv-size ({}: the model's
    own float cache)."""
    from app.cli import kv_options

    options = kv_options(args)
    return {**options, "max_kv_size": args.max_kv_size} if args.max_kv_size else options


def describe_cache(options: dict) -> str:
    """'8-bit KV (groups of 64, float for the first 512 tokens), bounded to 4,096 tokens'; '' for float KV."""
    parts = []
    if options.get("kv_bits"):
        start = options.get("quantized_kv_start")
        parts.append(f"{options['kv_bits']}-bit KV (groups of {options['kv_group_size']}"
                     + (f", float for the first {start:,} tokens" if start else "") + ")")
    if options.get("max_kv_size"):
        parts.append(f"KV bounded to {options['max_kv_size']:,} tokens")
    return ", ".join(parts)


TOOL_NAMES = {"ours": "mlxmodels"}  # how tables, CSV and plots name a tool (JSON keeps the keys "ours", "mlx-lm")


def tool_name(tool: str) -> str:
    return TOOL_NAMES.get(tool, tool)


def runs_of(report: dict) -> List[dict]:
    """The per-pair results: a sweep's "runs", or the report itself for one -p, -g pair (the shape it always had)."""
    return report.get("runs", [report])


def versions(compare: Optional[str]) -> dict:
    """What a comparison needs to be repeated: the tools', MLX's and Python's versions, the OS and the chip."""
    import platform
    from importlib import metadata

    import mlx.core as mx

    from app.doctor import _chip, _os, _ours, _safe

    out = {"mlxmodels": _safe(_ours), "mlx": mx.__version__}
    if compare:
        out[compare] = _safe(lambda: metadata.version(compare))
    out.update({"python": platform.python_version(), "os": _safe(_os), "chip": _safe(_chip),
                "device": _safe(lambda: str(mx.default_device()))})
    return out


def _bench(args) -> dict:
    from app import bench_view, model_arg
    from app.progress import hub_downloads, on_terminal
    from mlxmodels.adapters import adapter_folder
    from mlxmodels.families import get_adapter

    if args.plot:
        if not args.plot.lower().endswith(".png"):
            raise ValueError(f"--plot writes a PNG; give a file name ending in .png, not {args.plot!r}")
        _check_plot_path(Path(args.plot))  # before the minutes of work, not after
    with hub_downloads():
        folder = model_arg.resolve_folder(args.model).absolute()  # the workers run in another folder
    adapter = str(adapter_folder(args.adapter_path).absolute()) if args.adapter_path else None  # checked in a worker
    cfg = model_arg.model_config(folder)
    get_adapter(cfg.get("model_type"))  # a model we cannot load fails here
    cache = cache_options(args)  # a group size the model's rows cannot take: the ours worker says so, in one line
    options = {"adapter_path": adapter, "cache_options": cache}
    context = model_arg.context_length(folder)
    ps, gs = args.prompt_tokens, args.gen_tokens
    if max(ps) + max(gs) > context:  # past it positions are undefined (or out of range)
        raise ValueError(f"-p {max(ps)} and -g {max(gs)} make {max(ps) + max(gs):,}"
                         f" tokens, past the model's context of {context:,}: ask for fewer")
    tools = ["ours"]
    if args.compare == "mlx-lm":
        if model_arg.is_gguf(folder):
            raise ModelError(f"--compare mlx-lm needs an MLX folder (mlx-lm does not read GGUF); make one with "
                             f"`mlxm convert {folder} OUT` and bench that")
        if importlib.util.find_spec("mlx_lm") is None:
            raise ModelError("--compare mlx-lm needs mlx-lm installed: pip install mlx-lm")
        tools.append("mlx-lm")
    progress = _Progress(on_terminal() and args.output != "json")
    pairs = list(itertools.product(ps, gs))
    logs, keep = None, False
    try:
        with contextlib.ExitStack() as stack:
            folders = {"ours": str(folder)}
            left_out = 0
            if "mlx-lm" in tools:
                layers = (cfg.get("text_config") or cfg).get("num_hidden_layers")
                view, left_out = (stack.enter_context(bench_view.peer_view(folder, layers))
                                  if isinstance(layers, int) and not model_arg.is_gguf(folder) else (folder, 0))
                folders["mlx-lm"] = str(view)
            with signals.held():  # the folder's name is recorded before a signal can stop us
                logs = Path(tempfile.mkdtemp(prefix="mlxm-bench-"))  # the workers' stderr: kept if one fails
            runs, failed, start = [], {}, time.monotonic()
            for i, (p, g) in enumerate(pairs, 1):
                r = measure(folders, p, g, args.trials, args.dtype, args.prefill_step, progress, logs, options)
                failed.update(r.pop("peer_failed", {}))
                folders = {t: f for t, f in folders.items() if t not in failed}  # a peer that failed stays out
                runs.append(r)
                if len(pairs) > 1:
                    progress.line(_finished(i, len(pairs), r, time.monotonic() - start))
            top = {"folder": str(folder), "model": model_arg.display_name(args.model), "trials": args.trials,
                   "prefill_step": args.prefill_step, "versions": versions(args.compare),
                   **({"adapter": adapter} if adapter else {}), **({"cache": cache} if cache else {})}
            report = {**runs[0], **top} if len(runs) == 1 else {**top, "runs": runs}
            if failed:
                report["peer_failed"] = failed
            if left_out and "mlx-lm" in folders:
                report["peer_view"] = left_out
            keep = bool(failed)  # the note names the peer's log
            if args.plot:
                report["plot"] = plot(runs, report["model"], args.plot, folders, args.dtype, args.prefill_step,
                                      progress, logs, options)
    except BenchmarkFailed:
        keep = True  # its error names its log
        raise
    finally:
        progress.done()  # a failure's line must not follow a progress line
        if logs is not None and not keep:
            shutil.rmtree(logs, ignore_errors=True)
    return report


def _duration(s: float) -> str:
    s = round(s)
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def _finished(i: int, n: int, run: dict, elapsed: float) -> str:
    """The line a finished pair of a sweep leaves: its medians and how long the rest should take at this pace."""
    speeds = ", ".join(f"{tool_name(t)} {r['prompt_tps']['median']:.1f} / {r['generation_tps']['median']:.1f}"
                       for t, r in run["tools"].items())
    left = f", about {_duration(elapsed / i * (n - i))} left" if i < n else ""
    return (f"[{i}/{n}] p{run['prompt_tokens']} g{run['gen_tokens']}: {speeds} prompt / generation tok/s "
            f"({_duration(elapsed)} so far{left})")


class _Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, text: str) -> None:
        if self.enabled:
            print(f"\r\x1b[2K{text}", end="", file=sys.stderr, flush=True)

    def line(self, text: str) -> None:
        """A line that stays (a finished pair of a sweep), where the progress line is drawn."""
        if self.enabled:
            print(f"\r\x1b[2K{text}", file=sys.stderr, flush=True)

    def done(self) -> None:
        self("")


class BenchmarkFailed(ModelError):
    """A worker process died; the message names its log, which is kept."""


@contextlib.contextmanager
def _running(folders: Dict[str, str], p: int, g: int, dtype: Optional[str], step: int, logs: Optional[Path],
             failed: Optional[Dict[str, str]] = None, options: Optional[dict] = None):
    """The workers of one setting (loaded and warmed up), one per tool -> folder. Leaving normally they quit;
    leaving by an error or a signal they are stopped at once, mid-trial or not. With `failed`, a peer (a tool
    other than ours) that cannot load is recorded there (tool -> why) and left out instead of ending the run."""
    from app import bench

    workers, stage = [], "could not start"
    try:
        for tool, folder in folders.items():
            try:
                workers.append(bench.Worker(tool, folder, dtype, p, g, step,
                                            log=logs and logs / f"{tool}-p{p}.log", **(options or {})))
            except bench.WorkerFailed as e:
                if failed is None or tool == "ours":
                    raise
                failed[tool] = str(e)
        stage = "failed"
        yield workers
    except BaseException as e:
        for w in workers:
            w.stop()
        if isinstance(e, bench.WorkerFailed):
            raise BenchmarkFailed(f"the benchmark {stage}: {e}") from None
        raise
    for w in workers:
        w.close()


def _trials(workers, n: int) -> List[List[dict]]:
    from app import bench

    if len(workers) == 2:
        return list(bench.run_interleaved(workers[0], workers[1], n))
    return [[workers[0].ask("trial") for _ in range(n)]]


def measure(folders: Dict[str, str], p: int, g: int, n: int, dtype: Optional[str], step: int,
            progress=lambda s: None, logs: Optional[Path] = None, options: Optional[dict] = None) -> dict:
    """folders: tool -> the folder it loads, ours first; `options`: what every tool's Worker takes besides
    (adapter_path, a LoRA/DoRA folder; cache_options, make_cache's KV options). A peer that cannot load is left
    out, named in report["peer_failed"] with why."""
    from app import bench

    progress(f"loading {' and '.join(folders)} ...")
    failed: Dict[str, str] = {}
    with _running(folders, p, g, dtype, step, logs, failed, options) as workers:
        progress(f"{n} trial(s) of a {p}-token prompt + {g} tokens ...")
        results = _trials(workers, n)
    tools = [w.tool for w in workers]
    out: Dict[str, dict] = {}
    for tool, w, trials in zip(tools, workers, results):
        out[tool] = {
            "dtype": w.info.get("dtype"),
            "load_s": w.info.get("load_s"),
            "weight_bytes": w.info.get("weight_bytes"),
            "kv_bytes": trials[-1].get("kv_state_bytes"),  # after the last trial (bench.time_generation)
            **bench.summarize(trials),
            "trials": [{k: t[k] for k in bench.METRICS + bench.CPU_METRICS if k in t} for t in trials],
        }
    report = {"folder": folders["ours"], "prompt_tokens": p, "gen_tokens": g, "trials": n, "prefill_step": step,
              "tools": out}
    if len(tools) == 2:
        report["ratios"] = bench.ratios(out["ours"], out["mlx-lm"])
    if failed:
        report["peer_failed"] = failed
    return report


PLOT_WARN_S = 60.0  # a --plot sweep estimated to take longer than this is announced first


def plot(runs: List[dict], model: str, path: str, folders: Dict[str, str], dtype: Optional[str], step: int,
         progress=lambda s: None, logs: Optional[Path] = None, options: Optional[dict] = None) -> dict:
    """tok/s against context length for the first -g: a sweep's -p values (measured already), or for one -p one
    trial per tool at p/8, p/4 and p/2 (p itself comes from the main run)."""
    from app.png_plot import line_chart

    tools = list(folders)
    g = runs[0]["gen_tokens"]
    at_g = {r["prompt_tokens"]: r for r in runs if r["gen_tokens"] == g}
    if len(at_g) > 1:
        contexts = sorted(at_g)
    else:
        p = next(iter(at_g))
        contexts = sorted({max(8, p >> k) for k in range(4)})
        extra = [c for c in contexts if c not in at_g]
        estimate = plot_estimate(at_g[p], extra)
        if extra and estimate > PLOT_WARN_S:
            progress("")  # the note must not follow a progress line
            print(f"mlxm: note: --plot runs {len(extra)} more context length(s) ({', '.join(map(str, extra))}), "
                  f"about {_duration(estimate)} (estimated from the p{p} g{g} run: each tool's load time plus a "
                  "warm-up and a trial at its median speeds); Ctrl-C stops it", file=sys.stderr, flush=True)
    points = []
    for c in contexts:
        if c in at_g:
            row = {t: {m: at_g[c]["tools"][t][m]["median"] for m in ("prompt_tps", "generation_tps")} for t in tools}
        else:
            progress(f"plot: context {c} ...")
            with _running(folders, c, g, dtype, step, logs, options=options) as workers:
                results = _trials(workers, 1)
            row = {t: {m: r[0][m] for m in ("prompt_tps", "generation_tps")} for t, r in zip(tools, results)}
        points.append({"context": c, **row})
    dt = runs[0]["tools"]["ours"]["dtype"]
    png = line_chart(f"mlxm bench: {model} ({dt}), {g} generated tokens", contexts, [
        ("prompt tok/s", {tool_name(t): [pt[t]["prompt_tps"] for pt in points] for t in tools}),
        ("generation tok/s", {tool_name(t): [pt[t]["generation_tps"] for pt in points] for t in tools}),
    ], "context (tokens)")
    _write_plot(Path(path), png)
    return {"file": str(path), "points": points}


def plot_estimate(run: dict, contexts: List[int]) -> float:
    """Seconds the plot's extra context lengths should take, from a measured run: per tool and length, a load
    (its load_s) and two generations (warm-up and trial) at the run's median prompt and generation tok/s; shorter
    prompts are a little faster each, so this leans long."""
    g, total = run["gen_tokens"], 0.0
    for r in run["tools"].values():
        gen = (g - 1) / r["generation_tps"]["median"] if r["generation_tps"]["median"] > 0 else 0.0
        for c in contexts:
            total += (r.get("load_s") or 0.0) + 2 * (c / r["prompt_tps"]["median"] + gen)
    return total


def _check_plot_path(path: Path) -> None:
    """--plot names a new file or a regular one to replace, in a folder that exists. A symlink is refused, not
    followed or replaced: we cannot tell whether the link or the file it points to was meant, and writing
    through it could overwrite a file anywhere, while replacing it loses the link; refused, nothing is lost."""
    from mlxmodels.formats.folder import kind_of

    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # absent: the folder is judged below
        mode = None
    if mode is not None and stat.S_ISLNK(mode):
        raise ValueError(f"--plot {path} is a symbolic link; give the path of a new or regular file (the link is "
                         "never followed, nor replaced)")
    if mode is not None and not stat.S_ISREG(mode):
        raise ValueError(f"--plot {path} is a {kind_of(mode)}, not a regular file; give the path of a new PNG file")
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"--plot {path}: the folder {parent} does not exist; create it or give another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--plot {path}: cannot write in the folder {parent}; give another path")


def _write_plot(path: Path, data: bytes) -> None:
    """A temporary file beside `path`, renamed onto it: the plot appears whole or not at all, and the rename
    replaces whatever entry is there (a link made meanwhile, not the file it points to), never writing
    through it or into a FIFO."""
    tmp = None
    try:
        with signals.held():  # its name is recorded before a signal can stop us
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)  # as a plain open() would make it, not mkstemp's 0600
            f.write(data)
        _check_plot_path(path)  # again: it may have changed during the run
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError):  # a full disk, a read-only folder: name the plot, not the temporary file
            raise OSError(f"--plot {path}: cannot write it: {e.strerror or e}") from None
        raise


def format_report(report: dict) -> str:
    from app import bench
    from app.sizes import human_bytes

    runs = runs_of(report)
    rows = []
    for r in runs:
        setting = f"p{r['prompt_tokens']} g{r['gen_tokens']}"
        rows += [{"setting": setting, "tool": tool_name(t), "dtype": x["dtype"], "summary": x}
                 for t, x in r["tools"].items()]
        if "ratios" in r:
            rows.append({"setting": setting, "ratio": r["ratios"]})
    what = (f"{runs[0]['prompt_tokens']}-token prompt, {runs[0]['gen_tokens']} generated tokens" if len(runs) == 1
            else f"{len(runs)} settings (pN gM: N prompt tokens, M generated)")
    cache = describe_cache(report.get("cache", {}))
    lines = [(f"{report['model']}: {what}, {cache + ', ' if cache else ''}{report['trials']} trial(s) each; tok/s as "
              "mean ± standard deviation and median [min-max]"), "", bench.table(rows)]
    kv = [(tool_name(t), x["kv_bytes"]) for t, x in runs[-1]["tools"].items() if x.get("kv_bytes") is not None]
    if kv:
        at = f" at p{runs[-1]['prompt_tokens']} g{runs[-1]['gen_tokens']}" if len(runs) > 1 else ""
        lines += ["", f"KV cache arrays after a trial{at}: " + ", ".join(f"{t} {human_bytes(b)}" for t, b in kv)]
    compared = [r for r in runs if "ratios" in r]
    lines += [""] if compared else []
    for r in compared:
        q = r["ratios"]
        at = f" at p{r['prompt_tokens']} g{r['gen_tokens']}" if len(runs) > 1 else ""
        lines.append(f"mlxmodels / mlx-lm{at}: prompt {q['prompt_tps']:.2f}x, generation "
                     f"{q['generation_tps']:.2f}x (> 1: mlxmodels faster), peak memory {q['peak_memory_gb']:.2f}x "
                     "(< 1: mlxmodels smaller)")
    if "plot" in report:
        lines += ["", f"plot: {report['plot']['file']}"]
    return "\n".join(lines)


def format_csv(report: dict) -> str:
    """One row per pair and tool: the setting, then each metric's mean, sd, median, min and max (blank where a
    run did not record it). Ratios are left to the reader (two rows of the same pair)."""
    from app import bench

    stats = ("mean", "sd", "median", "min", "max")
    head = ["model", "prompt_tokens", "gen_tokens", "tool", "dtype", "trials", "load_s"]
    head += [f"{m}_{k}" for m in bench.METRICS + bench.CPU_METRICS for k in stats]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(head)
    for r in runs_of(report):
        for t, x in r["tools"].items():
            w.writerow([report["model"], r["prompt_tokens"], r["gen_tokens"], tool_name(t), x["dtype"],
                        len(x["trials"]), x.get("load_s")]
                       + [x[m].get(k, "") if m in x else "" for m in bench.METRICS + bench.CPU_METRICS
                          for k in stats])
    return out.getvalue()
