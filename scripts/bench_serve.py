#!/usr/bin/env python
"""OpenAI-compatible servers under concurrent load: `mlxm serve` against `mlx_lm.server` on the same model.

    python scripts/bench_serve.py -m MODEL_DIR [--tools ours,mlx-lm,ours-no-prefix] [--clients 1,4,8,16] [--requests 2]
                                  [--prompt-words 64] [--max-tokens 64] [--system-words 1000]
                                  [--prefix-trials 3] [--json FILE]

Each tool's server is started on a free 127.0.0.1 port (its output kept in a log shown if it fails), ready when
GET /health answers, and stopped after its runs. Every request is a streaming chat completion at temperature 0
with its own prompt.
1. Load: for each client count N, after an untimed round of the same shape (a batch size seen for the first time
   costs a compile trace in ours), N threads each send --requests requests one after another. Aggregate tok/s =
   completion tokens (the usage the server reports, else the content chunks) / wall time from the first request
   to the last reply; time to first token (TTFT) runs from sending a request to its first content chunk, median
   and p95 over the round's requests.
2. Shared prefix: per trial, a request with a fresh --system-words system prompt runs to its end; then, in
   alternating order, one with the same system prompt and another question (warm) and one with another fresh
   system prompt of the same length (cold). The medians of their TTFT and cold/warm are reported: the gain of a
   prefix cache (mlx_lm.server has a prompt cache of its own). The tool ours-no-prefix is ours with
   --no-prefix-cache: its cold and warm are both full prefills, the baseline for ours' warm TTFT.
"""

from __future__ import annotations

import argparse
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
READY_TIMEOUT = 300  # seconds a server may take to load the model
REQUEST_TIMEOUT = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        self.proc = subprocess.Popen(server_command(tool, model, self.port, max_batch), cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
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
    ttft, chunks, usage = None, 0, None
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
    tokens = usage["completion_tokens"] if usage else chunks
    return dict(ttft=ttft if ttft is not None else time.perf_counter() - start,
                seconds=time.perf_counter() - start, tokens=tokens, start=start, end=time.perf_counter())


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(["alpha", "bravo", "delta", "echo", "kilo", "lima", "oscar", "tango", "zulu"]) +
                    str(rng.randrange(100)) for _ in range(n))


def load_round(server: Server, clients: int, args, rng: random.Random) -> dict:
    prompts = [[{"role": "user", "content": f"Request {c}.{k}: " + words(rng, args.prompt_words)}
                for k in range(args.requests)] for c in range(clients)]
    results: List[dict] = []
    lock = threading.Lock()

    def client(mine):
        for message in mine:
            out = chat(server, [message], args.max_tokens)
            with lock:
                results.append(out)

    threads = [threading.Thread(target=client, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    ttfts = sorted(r["ttft"] for r in results)
    return dict(clients=clients, requests=len(results), tokens=sum(r["tokens"] for r in results), seconds=wall,
                aggregate_tps=sum(r["tokens"] for r in results) / wall, ttft_median=statistics.median(ttfts),
                ttft_p95=ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))])


def prefix_trials(server: Server, args, rng: random.Random) -> dict:
    cold, warm = [], []
    for t in range(args.prefix_trials):
        system = words(rng, args.system_words)
        chat(server, [{"role": "system", "content": system}, {"role": "user", "content": "First question?"}], 4)
        second = {"role": "user", "content": f"Second question {t}?"}
        runs = [("warm", system), ("cold", words(rng, args.system_words))]
        for name, text in (runs if t % 2 == 0 else runs[::-1]):
            out = chat(server, [{"role": "system", "content": text}, second], 4)
            (warm if name == "warm" else cold).append(out["ttft"])
    c, w = statistics.median(cold), statistics.median(warm)
    return dict(cold_ttft=c, warm_ttft=w, speedup=c / w, cold=cold, warm=warm)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True, help="a model folder both servers load")
    ap.add_argument("--tools", default="ours,mlx-lm")
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    ap.add_argument("--prompt-words", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--system-words", type=int, default=1000)
    ap.add_argument("--prefix-trials", type=int, default=3)
    ap.add_argument("--json", help="write every number to this file")
    args = ap.parse_args(argv)
    tools = [t.strip() for t in args.tools.split(",")]
    if not set(tools) <= {"ours", "ours-no-prefix", "mlx-lm"}:
        ap.error(f"--tools: ours, ours-no-prefix and/or mlx-lm, got {args.tools}")
    clients = [int(c) for c in args.clients.split(",")]
    out = {"model": args.model, "settings": vars(args), "tools": {}}
    for tool in tools:
        server = Server(tool, args.model, max(clients))
        try:
            rng = random.Random(0)  # every tool gets the same prompts
            chat(server, [{"role": "user", "content": "warm up"}], 4)
            rounds = []
            for n in clients:
                # untimed first: batch sizes seen for the first time cost a trace each (mx.compile) in ours
                load_round(server, n, args, random.Random(n))
                rounds.append(load_round(server, n, args, rng))
                r = rounds[-1]
                print(f"{tool:14s} {n:3d} clients: {r['aggregate_tps']:8.1f} tok/s, TTFT median "
                      f"{1000 * r['ttft_median']:7.0f} ms, p95 {1000 * r['ttft_p95']:7.0f} ms", flush=True)
            prefix = prefix_trials(server, args, rng)
            print(f"{tool:14s} shared {args.system_words}-word system prompt: TTFT cold "
                  f"{1000 * prefix['cold_ttft']:.0f} ms, warm {1000 * prefix['warm_ttft']:.0f} ms, "
                  f"{prefix['speedup']:.1f}x", flush=True)
            out["tools"][tool] = dict(rounds=rounds, prefix=prefix)
        finally:
            server.stop()
    if {"ours", "mlx-lm"} <= out["tools"].keys():
        for ours, theirs in zip(out["tools"]["ours"]["rounds"], out["tools"]["mlx-lm"]["rounds"]):
            print(f"{ours['clients']:3d} clients: ours / mlx-lm aggregate tok/s = "
                  f"{ours['aggregate_tps'] / theirs['aggregate_tps']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
