#!/usr/bin/env python
"""OpenAI-compatible servers under concurrent load: `mlxm serve` against `mlx_lm.server` on the same model.

    python scripts/bench_serve.py -m MODEL_DIR [--tools ours,mlx-lm,ours-no-prefix] [--clients 1,4,8,16]
                                  [--requests 2] [--trials 3] [--prompt-words 64] [--max-tokens 64] [--system-words 280]
                                  [--prefix-trials 3] [--out FILE]

Each tool's server is started on a free 127.0.0.1 port (its output kept in a log shown if it fails), ready when
GET /health answers; all stay up for the whole run and take turns (ABBA) within each measurement, so a load
that drifts on a shared machine weighs on every tool alike (an idle server takes no CPU), and all are stopped at
the end. Every request is a streaming chat completion at temperature 0 with its own prompt.
1. Load: for each client count N, after an untimed round of one request per client (a batch size seen for the
   first time costs a compile trace in ours), --trials timed rounds in which N threads each send --requests
   requests one after another (the tools alternating round by round). Aggregate tok/s = completion tokens (the
   usage the server reports, else the content chunks) / wall time from the first request to the last reply; time
   to first token (TTFT) runs from sending a request to its first content chunk, median and p95 over the round's
   requests; a request whose connection fails is counted, not timed. Each figure reported is the median over
   the trials. ours-no-prefix skips this part: its batching is ours'.
2. Shared prefix: per trial, a request with a fresh --system-words system prompt (280 words are about 1,000
   tokens with SmolLM2's tokenizer; the prompt's token count, from the server's usage, is reported) runs to its
   end; then, in
   alternating order, one with the same system prompt and another question (warm) and one with another fresh
   system prompt of the same length (cold). The medians of their TTFT and cold/warm are reported: the gain of a
   prefix cache (mlx_lm.server has a prompt cache of its own). The tool ours-no-prefix is ours with
   --no-prefix-cache: its cold and warm are both full prefills, the baseline for ours' warm TTFT.

mlx_lm.server imports mlx.core before anything could load OpenBLAS, so on Linux it would run on the mlx[cpu]
wheel's reference BLAS (20-40x slower float32 matmuls) while ours loads OpenBLAS (mlxmodels/blas.py); the script
starts it with OpenBLAS in LD_PRELOAD, the same library, so both servers do the same arithmetic. The machine
(cores, load average before and after each tool, MLX and mlx-lm versions) goes into the table and the --out JSON.
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
OPENBLAS = ("/usr/lib/*/openblas-pthread/libopenblas.so.0", "/usr/lib/*/libopenblas.so.0")  # as mlxmodels/blas.py
READY_TIMEOUT = 300  # seconds a server may take to load the model
REQUEST_TIMEOUT = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openblas() -> str:
    """OpenBLAS's path where mlxmodels/blas.py would find it, else "" (macOS: MLX uses Accelerate)."""
    if not sys.platform.startswith("linux"):
        return ""
    return next((path for pattern in OPENBLAS for path in sorted(glob.glob(pattern))), "")


def server_command(tool: str, model: str, port: int, max_batch: int) -> List[str]:
    if tool.startswith("ours"):  # ours-no-prefix: prefix cache off, to measure what it saves
        return [sys.executable, "-m", "app.cli", "serve", "-m", model, "--port", str(port), "--max-batch",
                str(max_batch)] + (["--no-prefix-cache"] if tool == "ours-no-prefix" else [])
    return [sys.executable, "-m", "mlx_lm.server", "--model", model, "--port", str(port),
            "--decode-concurrency", str(max_batch)]


class Server:
    def __init__(self, tool: str, model: str, max_batch: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench_serve_{tool}_", suffix=".log", delete=False)
        env = dict(os.environ)
        if tool == "mlx-lm" and openblas():
            env["LD_PRELOAD"] = " ".join(filter(None, [openblas(), env.get("LD_PRELOAD")]))
        self.proc = subprocess.Popen(server_command(tool, model, self.port, max_batch), cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail(f"{tool} server exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            self.fail(f"{tool} server not ready after {READY_TIMEOUT} s")
        self.model_id = model
        try:  # mlx_lm.server's list comes from the Hugging Face cache and can fail: the path names it as well
            with urllib.request.urlopen(self.url + "/v1/models", timeout=10) as r:
                self.model_id = json.load(r)["data"][0]["id"]
        except (OSError, ValueError, KeyError, IndexError):
            pass

    def fail(self, why: str):
        self.stop()
        sys.exit(f"{why}; its log:\n{Path(self.log.name).read_text()[-4000:]}")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def chat(server: Server, messages: list, max_tokens: int) -> Dict[str, float]:
    """One streaming request -> {ttft, seconds, tokens}."""
    body = dict(model=server.model_id, messages=messages, max_tokens=max_tokens, temperature=0.0, stream=True,
                stream_options={"include_usage": True})
    req = urllib.request.Request(server.url + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    start = time.perf_counter()
    ttft, chunks, usage = None, 0, {}
    with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            usage = event.get("usage") or usage
            delta = (event.get("choices") or [{}])[0].get("delta") or {}
            if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - start
    return dict(ttft=ttft if ttft is not None else time.perf_counter() - start, seconds=time.perf_counter() - start,
                tokens=usage.get("completion_tokens", chunks), prompt_tokens=usage.get("prompt_tokens"), start=start,
                end=time.perf_counter())


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(["alpha", "bravo", "delta", "echo", "kilo", "lima", "oscar", "tango", "zulu"]) +
                    str(rng.randrange(100)) for _ in range(n))


def load_round(server: Server, clients: int, args, rng: random.Random, requests: int) -> dict:
    prompts = [[{"role": "user", "content": f"Request {c}.{k}: " + words(rng, args.prompt_words)}
                for k in range(requests)] for c in range(clients)]
    results: List[dict] = []
    failed: List[str] = []
    lock = threading.Lock()

    def client(mine):
        for message in mine:
            try:
                out = chat(server, [message], args.max_tokens)
            except OSError as e:  # a refused or reset connection counts as a failure, not a lost thread
                with lock:
                    failed.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                results.append(out)

    threads = [threading.Thread(target=client, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        print(f"  {len(failed)} of {clients * requests} requests failed ({failed[0]})", flush=True)
    if not results:
        sys.exit(f"every request of a {clients}-client round failed: {failed[0]}")
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    ttfts = sorted(r["ttft"] for r in results)
    return dict(clients=clients, requests=len(results), tokens=sum(r["tokens"] for r in results), seconds=wall,
                aggregate_tps=sum(r["tokens"] for r in results) / wall, ttft_median=statistics.median(ttfts),
                ttft_p95=ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))], load_average=os.getloadavg()[0],
                failed=len(failed))


def summary(clients: int, trials: List[dict]) -> dict:
    """The medians of a client count's timed rounds."""
    keys = ("aggregate_tps", "ttft_median", "ttft_p95")
    return dict({k: statistics.median(t[k] for t in trials) for k in keys}, clients=clients, trials=trials,
                failed=sum(t["failed"] for t in trials))


def prefix_trial(server: Server, args, rng: random.Random, t: int) -> List[tuple]:
    """A request with a fresh system prompt, then (in an order alternating with t) one sharing it (warm) and one
    with another fresh one of the same length (cold): [(name, ttft, prompt tokens)]."""
    system = words(rng, args.system_words)
    chat(server, [{"role": "system", "content": system}, {"role": "user", "content": "First question?"}], 4)
    second = {"role": "user", "content": f"Second question {t}?"}
    runs = [("warm", system), ("cold", words(rng, args.system_words))]
    out = []
    for name, text in (runs if t % 2 == 0 else runs[::-1]):
        r = chat(server, [{"role": "system", "content": text}, second], 4)
        out.append((name, r["ttft"], r["prompt_tokens"]))
    return out


def prefix_summary(runs: List[tuple]) -> dict:
    cold = [ttft for name, ttft, _ in runs if name == "cold"]
    warm = [ttft for name, ttft, _ in runs if name == "warm"]
    known = [n for _, _, n in runs if n]
    c, w = statistics.median(cold), statistics.median(warm)
    return dict(cold_ttft=c, warm_ttft=w, speedup=c / w, cold=cold, warm=warm,
                prompt_tokens=statistics.median(known) if known else None)


def machine() -> dict:
    versions = {}
    for package in ("mlx", "mlx-lm"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return dict(platform=sys.platform, cpus=os.cpu_count(), load_average=os.getloadavg(), versions=versions)


def table(out: dict) -> str:
    """The results as Markdown, ready for docs/BENCHMARKS.md."""
    tools = out["tools"]
    lines = ["| tool | clients | aggregate tok/s | TTFT median (ms) | TTFT p95 (ms) | ours / mlx-lm tok/s | failed |",
             "|---|---|---|---|---|---|---|"]
    theirs = {r["clients"]: r for r in tools.get("mlx-lm", {}).get("rounds", [])}
    for tool, result in tools.items():
        for r in result["rounds"]:
            ratio = (f"{r['aggregate_tps'] / theirs[r['clients']]['aggregate_tps']:.2f}"
                     if tool == "ours" and r["clients"] in theirs else "")
            lines.append(f"| {tool} | {r['clients']} | {r['aggregate_tps']:.1f} | {1000 * r['ttft_median']:.0f} | "
                         f"{1000 * r['ttft_p95']:.0f} | {ratio} | {r['failed']} |")
    lines += ["", "| tool | system prompt tokens | TTFT fresh prompt (ms) | TTFT shared prefix (ms) | fresh / shared |",
              "|---|---|---|---|---|"]
    for tool, result in tools.items():
        p = result["prefix"]
        lines.append(f"| {tool} | {p['prompt_tokens']:.0f} | {1000 * p['cold_ttft']:.0f} | "
                     f"{1000 * p['warm_ttft']:.0f} | {p['speedup']:.1f}x |")
    if {"ours", "ours-no-prefix"} <= tools.keys():
        on, off = tools["ours"]["prefix"]["warm_ttft"], tools["ours-no-prefix"]["prefix"]["warm_ttft"]
        lines += ["", (f"Shared-prefix TTFT, prefix cache on vs off (ours): {1000 * on:.0f} ms vs {1000 * off:.0f} "
                       f"ms, {off / on:.1f}x.")]
    m = out["machine"]
    loads = out["load_average"] or [m["load_average"][0]]
    lines += ["", (f"Machine: {m['platform']}, {m['cpus']} CPUs, MLX {m['versions']['mlx']}, mlx-lm "
                   f"{m['versions']['mlx-lm']}; 1-minute load average at the end of each timed round: "
                   f"{min(loads):.1f}-{max(loads):.1f}, median {statistics.median(loads):.1f}.")]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True, help="a model folder both servers load")
    ap.add_argument("--tools", default="ours,mlx-lm")
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    ap.add_argument("--trials", type=int, default=3, help="timed rounds per client count (medians reported)")
    ap.add_argument("--prompt-words", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--system-words", type=int, default=280)
    ap.add_argument("--prefix-trials", type=int, default=3)
    ap.add_argument("--out", "--json", dest="out", help="write every number to this JSON file")
    args = ap.parse_args(argv)
    tools = [t.strip() for t in args.tools.split(",")]
    if not set(tools) <= {"ours", "ours-no-prefix", "mlx-lm"}:
        ap.error(f"--tools: ours, ours-no-prefix and/or mlx-lm, got {args.tools}")
    if args.trials < 1 or args.requests < 1 or args.prefix_trials < 1:
        ap.error("--trials, --requests and --prefix-trials must be at least 1")
    clients = [int(c) for c in args.clients.split(",")]
    out = {"model": args.model, "settings": vars(args), "machine": machine(), "tools": {}}
    # Every server is up for the whole run and the tools take turns (ABBA) within each client count, so a load
    # that drifts on a shared machine weighs on every tool alike; an idle server takes no CPU.
    servers: Dict[str, Server] = {}
    try:
        for tool in tools:
            servers[tool] = Server(tool, args.model, max(clients))
            chat(servers[tool], [{"role": "user", "content": "warm up"}], 4)
        rngs = {tool: random.Random(0) for tool in tools}  # every tool gets the same prompts
        loaded = [t for t in tools if t != "ours-no-prefix"]
        rounds: Dict[str, List[dict]] = {tool: [] for tool in tools}
        for n in clients:
            for tool in loaded:  # untimed: batch sizes seen for the first time cost a trace each in ours
                load_round(servers[tool], n, args, random.Random(n), 1)
            trials: Dict[str, List[dict]] = {tool: [] for tool in loaded}
            for k in range(args.trials):
                for tool in loaded if k % 2 == 0 else loaded[::-1]:
                    trials[tool].append(load_round(servers[tool], n, args, rngs[tool], args.requests))
            for tool in loaded:
                rounds[tool].append(summary(n, trials[tool]))
                r = rounds[tool][-1]
                print(f"{tool:14s} {n:3d} clients: {r['aggregate_tps']:8.1f} tok/s, TTFT median "
                      f"{1000 * r['ttft_median']:7.0f} ms, p95 {1000 * r['ttft_p95']:7.0f} ms", flush=True)
        runs: Dict[str, List[tuple]] = {tool: [] for tool in tools}
        for k in range(args.prefix_trials):
            for tool in tools if k % 2 == 0 else tools[::-1]:
                runs[tool] += prefix_trial(servers[tool], args, rngs[tool], k)
        for tool in tools:
            prefix = prefix_summary(runs[tool])
            print(f"{tool:14s} shared {prefix['prompt_tokens']:.0f}-token system prompt: TTFT cold "
                  f"{1000 * prefix['cold_ttft']:.0f} ms, warm {1000 * prefix['warm_ttft']:.0f} ms, "
                  f"{prefix['speedup']:.1f}x", flush=True)
            out["tools"][tool] = dict(rounds=rounds[tool], prefix=prefix)
    finally:
        for server in servers.values():
            server.stop()
    out["load_average"] = [t["load_average"] for r in rounds.values() for s in r for t in s["trials"]]
    print()
    print(table(out))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
