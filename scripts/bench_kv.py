#!/usr/bin/env python
"""Quantized contiguous KV (model.make_cache(kv_bits=...), not paged): bytes per token, decode tok/s, accuracy.

    python scripts/bench_kv.py [--contexts 1024,4096] [--gen-tokens 8] [--json FILE]
    python scripts/bench_kv.py --fill --contexts 4096,32768 [--gen-tokens 4] [--json FILE]

Random float32 models: bench_paged.py's Llama shape (hidden 1024, 8 layers, 16 heads, 4 KV heads, head dim 64), a
DeepSeek-V3-shaped MLA one (8 layers, 16 heads, latent 512 + rope 64) and, with --fill, a Gemma-3-shaped one (hidden
1024, 6 layers: 5 sliding-window layers of 1,024 tokens then 1 global, 8 heads, 4 KV heads of 128). For each context
and kv_bits in (float, 8, 4), group size 64: one sequence is prefilled to the context (chunks of 512), then decodes
`gen_tokens` greedy steps; reported: cache bytes per token (the rows held, every layer), decode tok/s, and the max
|logit| difference and KL of the first decode step against float KV. Attention is dequantize-then-attend.

--fill: a real 32k-token prefill is hours on a CPU, so every layer's cache is filled with context - 1 random rows
through its own update_and_fetch (quantized, windowed or chunked as that cache does), then the model decodes
`gen_tokens` steps from there; reported: KV bytes held, per token of context, peak memory of the decode steps
(mx.get_peak_memory after a reset: weights, cache and the step's temporaries) and decode tok/s. No logit columns:
random rows say nothing about accuracy (scripts/bench_kv_text.py measures that on a real model and text).
"""

from __future__ import annotations

import argparse
import json
import os
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
from mlxmodels.config import HFConfig  # noqa: E402
from mlxmodels.decoder import Decoder  # noqa: E402
from mlxmodels.families import get_adapter  # noqa: E402
from mlxmodels.spec import MLASpec  # noqa: E402

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


def gemma3() -> Decoder:
    cfg = dict(model_type="gemma3_text", hidden_size=1024, intermediate_size=2816, num_hidden_layers=6,
               num_attention_heads=8, num_key_value_heads=4, head_dim=128, vocab_size=32000, sliding_window=1024,
               max_position_embeddings=65536, query_pre_attn_scalar=128, rope_scaling={"rope_type": "linear",
                                                                                       "factor": 8.0})
    mx.random.seed(0)
    model = Decoder(get_adapter("gemma3_text").spec(HFConfig(cfg)))
    mx.eval(model.parameters())
    return model


def fill(cache, spec, n: int, step: int = 1024) -> None:
    """n random rows into every layer's cache through its own update_and_fetch, evaluated chunk by chunk."""
    for c, layer in zip(cache, spec.layers):
        attn = layer.attn
        for start in range(0, n, step):
            t = min(step, n - start)
            key = mx.random.key(start)
            if isinstance(attn, MLASpec):  # one shared row per token: [latent | rope key]
                c.update_and_fetch(mx.random.normal((1, 1, t, attn.kv_lora_rank + attn.qk_rope_head_dim), key=key))
            else:
                k, v = mx.random.normal((2, 1, attn.n_kv_heads, t, attn.head_dim), key=key)  # (B, KVH, T, D) each
                c.update_and_fetch(k, v)
            mx.eval([a for a in c.state if isinstance(a, mx.array)])
        mx.clear_cache()


def measure_filled(model, context: int, bits, gen_tokens: int) -> dict:
    cache = model.make_cache(kv_bits=bits, kv_group_size=64) if bits else model.make_cache()
    fill(cache, model.spec, context - 1)
    held = sum(c.nbytes for c in cache)
    y = mx.array([[1]])
    mx.eval(model(y, cache=cache))  # the first step at this context pays for one-off setup: not timed
    mx.clear_cache()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    for _ in range(gen_tokens):
        y = mx.argmax(model(y, cache=cache)[:, -1:], axis=-1)
        mx.eval(y)
    tps = gen_tokens / (time.perf_counter() - t0)
    peak = mx.get_peak_memory()
    del cache
    mx.clear_cache()
    return dict(kv_bytes=held, bytes_per_token=held / context, peak_gb=peak / 1e9, decode_tok_s=tps)


def log_softmax(x):
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="1024,4096")
    ap.add_argument("--gen-tokens", type=int, default=8)
    ap.add_argument("--json", default=None)
    ap.add_argument("--fill", action="store_true", help="random rows instead of a prefill (see above)")
    args = ap.parse_args()
    rows = []
    print(f"# {platform.machine()} {platform.system()}, MLX {mx.__version__}, device {mx.default_device()}")
    if args.fill:
        print("model     context  kv     KV MB    bytes/token  peak GB  decode tok/s  load")
        for name, build in (("llama", lambda: llama(False)), ("gemma3", gemma3), ("deepseek", mla)):
            model = build()
            for context in map(int, args.contexts.split(",")):
                for bits in (None, 8, 4):
                    r = measure_filled(model, context, bits, args.gen_tokens)
                    r.update(model=name, context=context, kv=bits or "float", load=os.getloadavg()[0])
                    rows.append(r)
                    print(f"{name:9} {context:7}  {str(r['kv']):5}  {r['kv_bytes'] / 2 ** 20:7.1f}  "
                          f"{r['bytes_per_token']:11.0f}  {r['peak_gb']:7.3f}  {r['decode_tok_s']:12.2f}  "
                          f"{r['load']:.1f}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return
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
