#!/usr/bin/env python
"""Quantized contiguous KV (model.make_cache(kv_bits=...), not paged): bytes per token, decode tok/s, accuracy.

    python scripts/bench_kv.py [--contexts 1024,4096] [--gen-tokens 8] [--json FILE]

Two random float32 models: bench_paged.py's Llama shape (hidden 1024, 8 layers, 16 heads, 4 KV heads, head dim 64)
and a DeepSeek-V3-shaped MLA one (8 layers, 16 heads, latent 512 + rope 64). For each context and kv_bits in
(float, 8, 4), group size 64: one sequence is prefilled to the context (chunks of 512), then decodes `gen_tokens`
greedy steps; reported: cache bytes per token (the rows held, every layer), decode tok/s, and the max |logit|
difference and KL of the first decode step against float KV. Attention is dequantize-then-attend.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlxmodels  # noqa: E402,F401  (first: it loads a fast BLAS on Linux, which must come before mlx.core)
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from scripts.bench_paged import llama  # noqa: E402
from scripts.bench_paged_kv import mla  # noqa: E402  (the same DeepSeek-V3-shaped model)

CHUNK = 512


def measure(model, context: int, bits, gen_tokens: int) -> dict:
    cache = model.make_cache(kv_bits=bits, kv_group_size=64) if bits else model.make_cache()
    ids = np.random.default_rng(0).integers(0, 1000, size=context)
    for start in range(0, context, CHUNK):
        logits = model(mx.array(ids[None, start:start + CHUNK]), cache=cache)
        mx.eval(logits)
    held = sum(a.nbytes for c in cache for a in c.state)
    y, first, t0 = mx.argmax(logits[:, -1:], axis=-1), None, time.perf_counter()
    for _ in range(gen_tokens):
        logits = model(y, cache=cache)
        y = mx.argmax(logits[:, -1:], axis=-1)
        mx.eval(y)
        first = np.array(logits[0, -1], dtype=np.float64) if first is None else first
    return dict(bytes_per_token=held / context, decode_tok_s=gen_tokens / (time.perf_counter() - t0), first=first)


def log_softmax(x):
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="1024,4096")
    ap.add_argument("--gen-tokens", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    print(f"# {platform.machine()} {platform.system()}, MLX {mx.__version__}, device {mx.default_device()}")
    print("model     context  kv     bytes/token  decode tok/s  max|dlogit|  KL")
    for name, build in (("llama", lambda: llama(False)), ("deepseek", mla)):
        model = build()
        for context in map(int, args.contexts.split(",")):
            base = None
            for bits in (None, 8, 4):
                r = measure(model, context, bits, args.gen_tokens)
                base = r["first"] if base is None else base
                p, q = log_softmax(base), log_softmax(r.pop("first"))
                r.update(model=name, context=context, kv=bits or "float", max_dlogit=float(np.abs(p - q).max()),
                         kl=float((np.exp(p) * (p - q)).sum()))
                rows.append(r)
                print(f"{name:9} {context:7}  {str(r['kv']):5}  {r['bytes_per_token']:11.0f}  "
                      f"{r['decode_tok_s']:12.1f}  {r['max_dlogit']:11.4f}  {r['kl']:.2e}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
