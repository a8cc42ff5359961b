"""`mlxm bench`: prompt and generation tok/s, time to first token and peak memory (median and spread over n
trials), optionally beside mlx-lm on the same folder, as a table, JSON, and a PNG of tok/s against context length.

The measuring is app/bench.py's: each tool runs in its own worker process, both are timed by the same loop, and
with --compare the two workers take turns (ABBA) so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from app import signals
from mlxmodels.config import ModelError

DESCRIPTION = """Measure prompt processing and generation speed (tokens per second), time to first token and peak
memory on a random prompt of -p tokens followed by -g greedy tokens, over -n trials after a warm-up. Each tool runs
in its own process. --compare mlx-lm runs mlx-lm on the same folder in the same run (trials interleaved) and prints
ours / mlx-lm ratios (mlx-lm reads a temporary view of the folder without MTP layers, which it cannot load; if it
still cannot load the model, ours is reported alone with one line saying why); --plot draws tok/s against context
length (-p/8 .. -p) to a PNG."""


def add_parser(sub, add_model):
    from app.flags import at_least, positive_int

    at_least_two = at_least(2)

    p = sub.add_parser("bench", help="prompt and generation tok/s, time to first token, peak memory",
                       description=DESCRIPTION)
    add_model(p)
    p.add_argument("-p", "--prompt-tokens", type=positive_int, default=512, metavar="N", help="prompt length (512)")
    p.add_argument("-g", "--gen-tokens", type=at_least_two, default=128, metavar="N", help="tokens to generate (128)")
    p.add_argument("-n", "--trials", type=positive_int, default=5, metavar="N", help="timed trials (5)")
    p.add_argument("--compare", choices=["mlx-lm"], default=None, help="also run mlx-lm and print the ratios")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="plot tok/s against context length")
    p.add_argument("--prefill-step", type=positive_int, default=512, metavar="N", help="prefill chunk size (512)")
    p.set_defaults(func=run)
    return p


def run(args) -> None:
    previous = signals.catch()  # a kill or a closed terminal stops the workers and removes the logs, as Ctrl-C
    try:
        report = _bench(args)
    except KeyboardInterrupt as e:  # _bench has cleaned up by now
        print(f"mlxm: interrupted by {signals.name(e)}: the benchmark stopped, its worker processes were ended and "
              "its temporary files removed", file=sys.stderr)
        sys.exit(signals.exit_status(e))
    finally:
        signals.restore(previous)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if report.get("peer_view"):
        print(f"mlxm: note: mlx-lm ran on a view of the folder without its {report['peer_view']} tensor(s) of "
              "layers past num_hidden_layers (MTP modules), which it cannot load", file=sys.stderr)
    for tool, why in report.get("peer_failed", {}).items():
        print(f"mlxm: note: --compare {tool} left out: {why}; the table has mlxmodels's results alone",
              file=sys.stderr)


def _bench(args) -> dict:
    from app import bench_view, model_arg
    from app.progress import hub_downloads, on_terminal
    from mlxmodels.families import get_adapter

    if args.plot:
        if not args.plot.lower().endswith(".png"):
            raise ValueError(f"--plot writes a PNG; give a file name ending in .png, not {args.plot!r}")
        _check_plot_path(Path(args.plot))  # before the minutes of work, not after
    with hub_downloads():
        folder = model_arg.resolve_folder(args.model).absolute()  # the workers run in another folder
    cfg = model_arg.model_config(folder)
    get_adapter(cfg.get("model_type"))  # a model we cannot load fails here
    context = model_arg.context_length(folder)
    if args.prompt_tokens + args.gen_tokens > context:  # past it positions are undefined (or out of range)
        raise ValueError(f"-p {args.prompt_tokens} and -g {args.gen_tokens} make {args.prompt_tokens + args.gen_tokens:,}"
                         f" tokens, past the model's context of {context:,}: ask for fewer")
    tools = ["ours"]
    if args.compare == "mlx-lm":
        if model_arg.is_gguf(folder):
            raise ModelError(f"--compare mlx-lm needs an MLX folder (mlx-lm does not read GGUF); make one with "
                             f"`mlxm convert {folder} OUT` and bench that")
        if importlib.util.find_spec("mlx_lm") is None:
            raise ModelError("--compare mlx-lm needs mlx-lm installed: pip install mlx-lm")
        tools.append("mlx-lm")
    progress = _Progress(on_terminal() and not args.json)
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
            report = measure(folders, args.prompt_tokens, args.gen_tokens, args.trials, args.dtype,
                             args.prefill_step, progress, logs)
            report["model"] = model_arg.display_name(args.model)
            if left_out and "mlx-lm" in report["tools"]:
                report["peer_view"] = left_out
            keep = bool(report.get("peer_failed"))  # the note names the peer's log
            if args.plot:
                ran = {t: f for t, f in folders.items() if t in report["tools"]}
                report["plot"] = plot(report, args.plot, ran, args.dtype, args.prefill_step, progress, logs)
    except BenchmarkFailed:
        keep = True  # its error names its log
        raise
    finally:
        progress.done()  # a failure's line must not follow a progress line
        if logs is not None and not keep:
            shutil.rmtree(logs, ignore_errors=True)
    return report


class _Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, text: str) -> None:
        if self.enabled:
            print(f"\r\x1b[2K{text}", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        self("")


class BenchmarkFailed(ModelError):
    """A worker process died; the message names its log, which is kept."""


@contextlib.contextmanager
def _running(folders: Dict[str, str], p: int, g: int, dtype: Optional[str], step: int, logs: Optional[Path],
             failed: Optional[Dict[str, str]] = None):
    """The workers of one setting (loaded and warmed up), one per tool -> folder. Leaving normally they quit;
    leaving by an error or a signal they are stopped at once, mid-trial or not. With `failed`, a peer (a tool
    other than ours) that cannot load is recorded there (tool -> why) and left out instead of ending the run."""
    from app import bench

    workers, stage = [], "could not start"
    try:
        for tool, folder in folders.items():
            try:
                workers.append(bench.Worker(tool, folder, dtype, p, g, step,
                                            log=logs and logs / f"{tool}-p{p}.log"))
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
            progress=lambda s: None, logs: Optional[Path] = None) -> dict:
    """folders: tool -> the folder it loads, ours first. A peer that cannot load is left out, named in
    report["peer_failed"] with why."""
    from app import bench

    progress(f"loading {' and '.join(folders)} ...")
    failed: Dict[str, str] = {}
    with _running(folders, p, g, dtype, step, logs, failed) as workers:
        progress(f"{n} trial(s) of a {p}-token prompt + {g} tokens ...")
        results = _trials(workers, n)
    tools = [w.tool for w in workers]
    out: Dict[str, dict] = {}
    for tool, w, trials in zip(tools, workers, results):
        out[tool] = {
            "dtype": w.info.get("dtype"),
            "load_s": w.info.get("load_s"),
            "weight_bytes": w.info.get("weight_bytes"),
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


def plot(report: dict, path: str, folders: Dict[str, str], dtype: Optional[str], step: int,
         progress=lambda s: None, logs: Optional[Path] = None) -> dict:
    """One trial per tool at each context length p/8, p/4, p/2 (p itself comes from the main run)."""
    from app.png_plot import line_chart

    tools = list(folders)
    p, g = report["prompt_tokens"], report["gen_tokens"]
    contexts = sorted({max(8, p >> k) for k in range(4)})
    points = []
    for c in contexts:
        if c == p:
            row = {t: {m: report["tools"][t][m]["median"] for m in ("prompt_tps", "generation_tps")} for t in tools}
        else:
            progress(f"plot: context {c} ...")
            with _running(folders, c, g, dtype, step, logs) as workers:
                results = _trials(workers, 1)
            row = {t: {m: r[0][m] for m in ("prompt_tps", "generation_tps")} for t, r in zip(tools, results)}
        points.append({"context": c, **row})
    dt = report["tools"]["ours"]["dtype"]
    png = line_chart(f"mlxm bench: {report.get('model', '')} ({dt}), {g} generated tokens", contexts, [
        ("prompt tok/s", {t: [pt[t]["prompt_tps"] for pt in points] for t in tools}),
        ("generation tok/s", {t: [pt[t]["generation_tps"] for pt in points] for t in tools}),
    ], "context (tokens)")
    _write_plot(Path(path), png)
    return {"file": str(path), "points": points}


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

    setting = f"p{report['prompt_tokens']} g{report['gen_tokens']}"
    rows = [{"setting": setting, "tool": t, "dtype": r["dtype"], "summary": r} for t, r in report["tools"].items()]
    if "ratios" in report:
        rows.append({"setting": setting, "ratio": report["ratios"]})
    lines = [f"{report['model']}: {report['prompt_tokens']}-token prompt, {report['gen_tokens']} generated tokens, "
             f"{report['trials']} trial(s); median [min-max]", "", bench.table(rows)]
    if "ratios" in report:
        q = report["ratios"]
        lines += ["", f"ours / mlx-lm: prompt {q['prompt_tps']:.2f}x, generation {q['generation_tps']:.2f}x "
                      f"(> 1: ours faster), peak memory {q['peak_memory_gb']:.2f}x (< 1: ours smaller)"]
    if "plot" in report:
        lines += ["", f"plot: {report['plot']['file']}"]
    return "\n".join(lines)
