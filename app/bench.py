"""Benchmark runner: prompt and generation tok/s, time to first token and peak memory, ours beside mlx-lm.

Both tools are timed by the same loop (`time_generation`), around each tool's own model forward and KV cache,
so the numbers share one definition:

- time to first token: prefill (chunks of `prefill_step_size`, each evaluated through the cache, then the last
  prompt token alone) plus the greedy sample of the first token;
- prompt tok/s = prompt tokens / time to first token;
- generation tok/s = (generated tokens - 1) / (time from the first token to the last), pipelined as both tools
  decode (token n+1 is queued with `mx.async_eval` before token n is read);
- peak memory: `mx.get_peak_memory()` after `mx.reset_peak_memory()`, weights included, in GB (1e9 bytes).

Each (tool, setting) runs in its own process (`worker`, driven over stdin/stdout), so peak memory and
allocator state are never shared. `run_interleaved` keeps the two workers of a setting alive together and
asks them for trials in ABBA order, so slow drift on a shared machine hits both tools alike.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from app import signals

OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"
METRICS = ("prompt_tps", "generation_tps", "ttft_s", "peak_memory_gb")
# Tokens per CPU-second of the whole worker process (all its threads): much less sensitive than wall time to
# other jobs on a shared machine, since waiting for a core is not charged (spinning threads are).
CPU_METRICS = ("prompt_tok_per_cpu_s", "generation_tok_per_cpu_s")
EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b(: |$)")  # a traceback's last line

# ---------------------------------------------------------------- loading, in the worker process


def load_tool(tool: str, folder: str, dtype: Optional[str], adapter_path: Optional[str] = None,
              cache_options: Optional[dict] = None) -> Tuple[Any, Callable[[], list], str]:
    """-> (model, make_cache, compute dtype name). dtype None: the tool's own default. `adapter_path`: a LoRA/DoRA
    folder from mlx_lm.lora, applied by each tool its own way (ours on the fly, mlx-lm's load_adapters).
    `cache_options`: make_cache's kv_bits, kv_group_size, quantized_kv_start, max_kv_size; mlx-lm gets them as its
    generate_step applies them (see `mlx_lm_cache`).

    ours: `mlxmodels.load(folder, dtype)`. mlx-lm: `mlx_lm.utils.load_model` (it has no dtype option; it computes
    in the checkpoint's dtype, for 4-bit the scales' dtype), then `model.set_dtype(...)` when a dtype is asked
    for, which casts every floating parameter (scales and biases of quantized layers included), as
    `mlx_lm.convert --dtype` does for unquantized weights.
    """
    import mlx.core as mx

    if tool == "ours":
        import mlxmodels

        model, _ = mlxmodels.load(folder, dtype=dtype, adapter_path=adapter_path)

        def make_cache():
            return model.make_cache(**(cache_options or {}))
    elif tool == "mlx-lm":
        from mlx_lm.models.cache import make_prompt_cache
        from mlx_lm.utils import load_model

        model, _ = load_model(Path(folder))
        if adapter_path is not None:
            from mlx_lm.tuner.utils import load_adapters

            load_adapters(model, adapter_path)
        if dtype is not None:
            model.set_dtype(getattr(mx, dtype))
            mx.eval(model.parameters())
        model.eval()
        model, make_cache = mlx_lm_cache(model, cache_options or {})
    else:
        raise ValueError(f"unknown tool {tool!r}; use ours or mlx-lm")
    return model, make_cache, float_dtype(model)


class QuantizingModel:
    """mlx-lm's model, its KV cache converted after each forward as mlx-lm's generate_step does
    (maybe_quantize_kv_cache: every layer whose cache has to_quantized, once it holds quantized_kv_start tokens)."""

    def __init__(self, model, bits: int, group_size: int, start: int):
        self.model, self.bits, self.group_size, self.start = model, bits, group_size, start

    def __call__(self, x, cache=None, **kwargs):
        from mlx_lm.generate import maybe_quantize_kv_cache

        out = self.model(x, cache=cache, **kwargs)
        maybe_quantize_kv_cache(cache, self.start, self.group_size, self.bits)
        return out

    def __getattr__(self, name):  # parameters(), layers, ...: the model's
        return getattr(self.model, name)


def mlx_lm_cache(model, options: dict) -> Tuple[Any, Callable[[], list]]:
    """-> (model, make_cache) for mlx-lm with our cache options: max_kv_size as make_prompt_cache takes it (a
    RotatingKVCache keeping 4 tokens), kv_bits by QuantizingModel. A model with a make_cache of its own (Llama's,
    for its sliding layers) gets no bound from make_prompt_cache, and a RotatingKVCache cannot be quantized
    (to_quantized raises): either way mlx-lm's worker fails and the report names why, rather than timing a cache
    unlike ours."""
    from mlx_lm.models.cache import make_prompt_cache

    bound = options.get("max_kv_size")
    if bound and hasattr(model, "make_cache"):
        raise ValueError(f"mlx-lm's {type(model).__module__} model makes its own cache, which ignores max_kv_size")

    def make_cache():
        return make_prompt_cache(model, max_kv_size=bound)

    quantizing = model
    if options.get("kv_bits"):
        quantizing = QuantizingModel(model, options["kv_bits"], options.get("kv_group_size", 64),
                                     options.get("quantized_kv_start", 0))
    return quantizing, make_cache


def float_dtype(model) -> str:
    """The most common floating dtype among the parameters: the dtype the model computes in."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    counts: Dict[str, int] = {}
    for _, p in tree_flatten(model.parameters()):
        if mx.issubdtype(p.dtype, mx.floating):
            name = str(p.dtype).replace("mlx.core.", "")
            counts[name] = counts.get(name, 0) + p.size
    return max(counts, key=counts.get) if counts else "?"


def weight_bytes(model) -> int:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    return sum(p.nbytes for _, p in tree_flatten(model.parameters()) if isinstance(p, mx.array))


# ---------------------------------------------------------------- the timing loop (same for both tools)


def time_generation(model, make_cache: Callable[[], list], prompt: Sequence[int], gen_tokens: int,
                    prefill_step_size: int = 512) -> Dict[str, float]:
    """One greedy generation from a fresh cache, timed; see the module docstring for the definitions."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    def states(cache):  # mlx-lm's QuantizedKVCache nests (codes, scales, biases) tuples in its state
        return [a for c in cache for _, a in tree_flatten(c.state) if isinstance(a, mx.array)]

    cache = make_cache()
    tokens = mx.array(list(prompt), dtype=mx.int32)
    mx.eval(tokens)
    mx.clear_cache()
    mx.reset_peak_memory()

    load_before = os.getloadavg()[0]
    cpu0 = time.process_time()
    tic = time.perf_counter()
    n, start = tokens.size, 0
    while n - start > 1:
        end = min(start + prefill_step_size, n - 1)
        model(tokens[None, start:end], cache=cache)
        mx.eval(states(cache))
        start = end
        mx.clear_cache()
    y = mx.argmax(model(tokens[None, start:], cache=cache)[:, -1, :], axis=-1)  # (1,)
    mx.async_eval(y)
    generated = []
    for i in range(gen_tokens):
        if i + 1 < gen_tokens:  # queue token i+1 before reading token i
            next_y = mx.argmax(model(y[None], cache=cache)[:, -1, :], axis=-1)
            mx.async_eval(next_y)
        generated.append(y.item())
        if i == 0:
            t_first = time.perf_counter()
            cpu_first = time.process_time()
        if i + 1 < gen_tokens:
            y = next_y
    t_last = time.perf_counter()
    cpu_last = time.process_time()
    ttft = t_first - tic
    return {
        "prompt_tps": n / ttft,
        "generation_tps": (gen_tokens - 1) / (t_last - t_first) if gen_tokens > 1 else 0.0,
        "ttft_s": ttft,
        "peak_memory_gb": mx.get_peak_memory() / 1e9,
        "prompt_tok_per_cpu_s": n / (cpu_first - cpu0),
        "generation_tok_per_cpu_s": (gen_tokens - 1) / (cpu_last - cpu_first) if gen_tokens > 1 else 0.0,
        "loadavg_1min": [load_before, os.getloadavg()[0]],
        "kv_state_bytes": sum(a.nbytes for a in states(cache)),  # ours: the rows held; mlx-lm: its buffers
        "cache_offset": cache[0].offset,
        "tokens": generated,
    }


def own_stream_stats(tool: str, folder: str, model, make_cache, prompt: Sequence[int], gen_tokens: int,
                     prefill_step_size: int = 512) -> Dict[str, float]:
    """The same generation through the tool's own `stream_generate`, with the stats it reports (a cross-check:
    mlx-lm's generation_tps counts the first token over the time since it, ours does not)."""
    import mlx.core as mx

    mx.clear_cache()
    mx.reset_peak_memory()
    if tool == "ours":
        import mlxmodels

        gen = mlxmodels.stream_generate(model, None, list(prompt), max_tokens=gen_tokens, temperature=0.0,
                                        prefill_step_size=prefill_step_size, cache=make_cache())
    else:
        from mlx_lm.generate import stream_generate
        from mlx_lm.utils import load_tokenizer

        tokenizer = load_tokenizer(Path(folder))
        tokenizer._eos_token_ids = set()  # random weights: never stop early
        gen = stream_generate(model, tokenizer, mx.array(list(prompt)), max_tokens=gen_tokens,
                              prefill_step_size=prefill_step_size, prompt_cache=make_cache())
    last = None
    for last in gen:
        pass
    if tool == "mlx-lm":  # mlx-lm queues one step past the last token on its own stream: let it finish
        from mlx_lm.generate import generation_stream

        mx.synchronize(generation_stream)
    return {"prompt_tps": last.prompt_tps, "generation_tps": last.generation_tps,
            "generation_tokens": last.generation_tokens, "peak_memory_gb": last.peak_memory}


# ---------------------------------------------------------------- worker process


def default_dtype(tool: str, folder: str, openblas: bool = False) -> str:
    """The compute dtype `tool` picks for `folder` when none is asked for (loaded in a fresh process)."""
    out = subprocess.run([sys.executable, "-m", "app.bench", "dtype", tool, folder], capture_output=True, text=True,
                         check=True, env=_env(openblas), cwd=str(Path(__file__).resolve().parents[1]))
    return out.stdout.strip().splitlines()[-1]


def _env(openblas: bool) -> dict:
    """Both tools get the same BLAS: OpenBLAS preloaded, or mlxmodels told not to load it itself."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env["MLXMODELS_OPENBLAS"] = "1" if openblas else "0"
    if openblas:
        env["LD_PRELOAD"] = OPENBLAS
    return env


def worker(tool: str, folder: str, dtype: Optional[str], prompt_tokens: int, gen_tokens: int,
           prefill_step_size: int = 512, seed: int = 0, vocab: int = 32000,
           adapter_path: Optional[str] = None, cache_options: Optional[dict] = None) -> None:
    """Load once, warm up, then answer one JSON line per "trial" (or "own") line read on stdin."""
    import mlx.core as mx

    from app.model_arg import model_config

    t0 = time.perf_counter()
    model, make_cache, dt = load_tool(tool, folder, dtype, adapter_path, cache_options)
    load_s = time.perf_counter() - t0
    cfg = model_config(Path(folder))  # checked and bounded, as every folder file is (a GGUF: its header)
    vocab = min(vocab, (cfg.get("text_config") or cfg).get("vocab_size") or vocab)  # ids past it crash the embedding
    prompt = mx.random.randint(0, vocab, (prompt_tokens,), key=mx.random.key(seed)).tolist()
    time_generation(model, make_cache, prompt, gen_tokens, prefill_step_size)  # warm-up, same shapes
    info = {"tool": tool, "dtype": dt, "requested_dtype": dtype, "load_s": load_s, "weight_bytes": weight_bytes(model),
            "mlx": mx.__version__, "ld_preload": os.environ.get("LD_PRELOAD", "")}
    _send(info)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "trial":
            _send(time_generation(model, make_cache, prompt, gen_tokens, prefill_step_size))
        elif cmd == "own":
            _send(own_stream_stats(tool, folder, model, make_cache, prompt, gen_tokens, prefill_step_size))
        elif cmd == "quit":
            break
    # Skip exit handlers: a preloaded OpenBLAS can deadlock joining its thread pool at exit after the
    # worker was stopped and continued (seen with libopenblas0-pthread 0.3.21).
    sys.stdout.flush()
    os._exit(0)


def _send(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class WorkerFailed(RuntimeError):
    """A worker process died or answered nonsense; the message names the tool, how it ended and its log file."""


class Worker:
    """A worker process seen from the driver. With `log`, the worker's stderr goes to that file (a traceback stays
    out of the driver's terminal; the error names the file)."""

    def __init__(self, tool: str, folder: str, dtype: Optional[str], prompt_tokens: int, gen_tokens: int,
                 prefill_step_size: int = 512, openblas: bool = False, cwd: Optional[str] = None,
                 log: Optional[Path] = None, adapter_path: Optional[str] = None,
                 cache_options: Optional[dict] = None):
        env = _env(openblas)
        args = [sys.executable, "-m", "app.bench", "worker", tool, folder, dtype or "default",
                str(prompt_tokens), str(gen_tokens), str(prefill_step_size), adapter_path or "",
                json.dumps(cache_options or {})]
        self.tool, self.log = tool, log
        stderr = open(log, "wb") if log is not None else None
        self.proc = None
        try:
            # signals held while the process starts: one arriving before self.proc is set would leave a worker
            # nobody stops
            with signals.held():
                try:
                    self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                                 text=True, env=env,
                                                 cwd=cwd or str(Path(__file__).resolve().parents[1]))
                finally:
                    if stderr is not None:
                        stderr.close()
            self.info = self._read()  # loading and warming up: minutes on a large model
            os.kill(self.proc.pid, signal.SIGSTOP)
        except BaseException:  # a failure or a signal: the worker must not outlive this
            if self.proc is not None:
                self.stop()
            raise

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        try:
            return json.loads(line)  # "" when the worker died
        except ValueError:
            raise self._failed() from None

    def _failed(self) -> WorkerFailed:
        if self.proc.poll() is None:  # alive but talking nonsense: it will not recover
            self.proc.kill()
        code = self.proc.wait()
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        last = ""
        if self.log is not None:
            lines = [ln.strip() for ln in Path(self.log).read_text(errors="replace").splitlines() if ln.strip()]
            # the exception's own line says why; what follows it (a list of names, say) rarely does
            errors = [ln for ln in lines if EXCEPTION_LINE.match(ln)]
            last = f": {(errors or lines)[-1][:300]}" if lines else ""
        where = f" (its log: {self.log})" if self.log is not None else ""
        return WorkerFailed(f"the {self.tool} worker {how}{last}{where}")

    def ask(self, cmd: str = "trial") -> dict:
        """Resume the worker, send `cmd`, read its answer, stop it again (SIGSTOP): an idle worker's threads
        (OpenBLAS spins its pool for a while after each call) must not steal cores from the one being timed."""
        try:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        except OSError:  # it is gone
            raise self._failed() from None
        answer = self._read()
        os.kill(self.proc.pid, signal.SIGSTOP)
        return answer

    def close(self, grace: float = 10.0) -> None:
        """Ask the worker to quit; one still there after `grace` seconds is stopped."""
        self.proc.send_signal(signal.SIGCONT)
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except OSError:  # it is gone
            pass
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        self.stop()

    def stop(self, grace: float = 5.0) -> None:
        """End the worker now, mid-trial or not (the run was interrupted, or failed): SIGTERM, then SIGKILL if it
        is still there after `grace` seconds. Nobody waits for a trial to finish: it may take minutes."""
        self.proc.terminate()  # no-ops once the process is reaped, so a pid reused since is never signalled
        self.proc.send_signal(signal.SIGCONT)  # a stopped worker acts on the SIGTERM only once continued
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:  # a quit line it never read
                pass


def run_interleaved(a: Worker, b: Worker, trials: int, own_stats: bool = False) -> Tuple[List[dict], List[dict]]:
    """Trials in ABBA order: a, b, b, a, a, b, ... Returns the trial lists of a and b."""
    ra: List[dict] = []
    rb: List[dict] = []
    for t in range(trials):
        order = [(a, ra), (b, rb)] if t % 2 == 0 else [(b, rb), (a, ra)]
        for w, out in order:
            out.append(w.ask("trial"))
    if own_stats:
        for w, out in ((a, ra), (b, rb)):
            own = w.ask("own")
            for r in out:
                r["own"] = own
    return ra, rb


# ---------------------------------------------------------------- statistics and report


def summarize(trials: List[dict]) -> Dict[str, Dict[str, float]]:
    """metric -> {median, min, max, mean, sd} over trials (sd: the sample standard deviation, 0 for one trial)."""
    out = {}
    for m in METRICS + CPU_METRICS:
        if m not in trials[0]:
            continue
        vals = [t[m] for t in trials]
        out[m] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
                  "mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    return out


def ratios(ours: Dict[str, Dict[str, float]], peer: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """ours / peer of the medians (tok/s: > 1 is ours faster; memory and TTFT: < 1 is ours smaller)."""
    return {m: ours[m]["median"] / peer[m]["median"] for m in METRICS + CPU_METRICS if m in ours and m in peer}


def fmt_spread(s: Dict[str, float], digits: int = 1) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def fmt_mean(s: Dict[str, float], digits: int = 1) -> str:
    """'123.4 ± 5.6' (mean ± standard deviation), '-' for a summary made before they were recorded."""
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}" if "mean" in s else "-"


def bytes_spread(s: Dict[str, float]) -> str:
    """A spread of GB values in the unit that fits its median (app/sizes.py): '12.3 [12.1-12.5] MB'."""
    from app.sizes import digits, unit_for

    scale, unit = unit_for(s["median"] * 1e9)
    d = digits(s["median"] * 1e9 / scale, unit)
    v = {k: s[k] * 1e9 / scale for k in ("median", "min", "max")}
    return f"{v['median']:.{d}f} [{v['min']:.{d}f}-{v['max']:.{d}f}] {unit}"


def table(rows: List[dict]) -> str:
    """Markdown table; each row: setting, tool, dtype, summary (or a ratio row). Prompt and generation tok/s come
    as mean ± standard deviation and as median [min-max]; the last two columns are tokens per CPU-second (see
    CPU_METRICS), "-" where a run did not record them."""
    head = ("| setting | tool | computes in | prompt tok/s | prompt median [min-max] | gen tok/s "
            "| gen median [min-max] | TTFT s | peak memory | prompt tok/CPU-s | gen tok/CPU-s |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if "ratio" in r:
            q = r["ratio"]
            cpu = [f"{q[m]:.2f}" if m in q else "-" for m in CPU_METRICS]
            lines.append(f"| {r['setting']} | **mlxmodels ÷ mlx-lm** | | | **{q['prompt_tps']:.2f}** | | "
                         f"**{q['generation_tps']:.2f}** | {q['ttft_s']:.2f} | {q['peak_memory_gb']:.2f} | "
                         f"{cpu[0]} | {cpu[1]} |")
        else:
            s = r["summary"]
            cpu = [fmt_spread(s[m]) if m in s else "-" for m in CPU_METRICS]
            lines.append(f"| {r['setting']} | {r['tool']} | {r['dtype']} | {fmt_mean(s['prompt_tps'])} | "
                         f"{fmt_spread(s['prompt_tps'])} | {fmt_mean(s['generation_tps'])} | "
                         f"{fmt_spread(s['generation_tps'])} | {fmt_spread(s['ttft_s'], 2)} | "
                         f"{bytes_spread(s['peak_memory_gb'])} | {cpu[0]} | {cpu[1]} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "dtype":  # the compute dtype a tool picks by default for a folder
        print(load_tool(argv[1], argv[2], None)[2])
        return 0
    if argv and argv[0] == "worker":
        # A process group of our own: Ctrl-C (sent to the terminal's foreground group) reaches only the driver,
        # which alone decides when a worker ends (Worker.stop), so an interrupted run reports the interruption,
        # never a worker that died of it. And if the driver is killed outright (SIGKILL) while we sit stopped
        # (SIGSTOP, between trials), our group is left orphaned with a stopped member, which the kernel ends
        # with SIGHUP (POSIX); in the driver's own group we would stay stopped for good.
        os.setpgid(0, 0)
        tool, folder, dtype, p, g, step = argv[1:7]
        worker(tool, folder, None if dtype == "default" else dtype, int(p), int(g), int(step),
               adapter_path=argv[7] or None if len(argv) > 7 else None,
               cache_options=json.loads(argv[8]) if len(argv) > 8 else None)
        return 0
    print("usage: python -m app.bench worker TOOL FOLDER DTYPE|default PROMPT_TOKENS GEN_TOKENS STEP "
          "[ADAPTER_DIR|'' [CACHE_OPTIONS_JSON]]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
