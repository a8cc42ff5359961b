#!/usr/bin/env python
"""One decode step's attention over a quantized KV cache: dequantize-then-attend vs mx.quantized_matmul.

    python scripts/bench_kv_attention.py [--contexts 4096,32768] [--reps 20] [--json FILE]

dequantize: mx.dequantize the held keys and values, then mx.fast.scaled_dot_product_attention (what
parts/quantized_cache.py does). quantized_matmul: scores = mx.quantized_matmul(q, key codes, transpose=True), softmax,
out = mx.quantized_matmul(p, value codes, transpose=False), the codes never widened (mlx-lm's
quantized_scaled_dot_product_attention). Shapes, float32, group size 64, one query token: Llama-shaped (16 query
heads over 4 KV heads of 64) and DeepSeek-V3-shaped MLA absorbed decode (16 heads over one shared row of latent 512
+ rope 64; values are the latent). Reported: the median of --reps timed steps (each evaluated alone) and the max
|difference| between the two outputs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlxmodels  # noqa: E402,F401  (first: it loads a fast BLAS on Linux, which must come before mlx.core)
import mlx.core as mx  # noqa: E402

GROUP = 64
# name -> (query heads, KV heads, key width, value width); MLA's value is the latent part of the key row
SHAPES = {"Llama": (16, 4, 64, 64), "DeepSeek-V3 MLA": (16, 1, 576, 512)}


def quantized_rows(n: int, kv_heads: int, width: int, bits: int, seed: int):
    x = mx.random.normal((1, kv_heads, n, width), key=mx.random.key(seed))  # (B, KVH, N, W)
    return mx.quantize(x, GROUP, bits)


def dequantized(q, keys, values, bits, scale, value_width):
    k = mx.dequantize(*keys, group_size=GROUP, bits=bits)  # (B, KVH, N, Dk)
    v = k[..., :value_width] if values is None else mx.dequantize(*values, group_size=GROUP, bits=bits)
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale)


def quantized_matmul(q, keys, values, bits, scale, value_width):
    b, h, _, d = q.shape
    kv_heads = keys[0].shape[1]
    qg = (q * scale).reshape(b, kv_heads, h // kv_heads, 1, d)  # (B, KVH, rep, 1, Dk)
    k = [a[:, :, None] for a in keys]  # (B, KVH, 1, N, *) broadcast over rep
    scores = mx.quantized_matmul(qg, *k, transpose=True, group_size=GROUP, bits=bits)  # (B, KVH, rep, 1, N)
    p = mx.softmax(scores, axis=-1, precise=True)
    if values is None:  # MLA: the latent is the first value_width columns of the key row, whole groups of it
        cols = value_width * bits // 32
        v = [keys[0][..., :cols], keys[1][..., :value_width // GROUP], keys[2][..., :value_width // GROUP]]
        v = [a[:, :, None] for a in v]
    else:
        v = [a[:, :, None] for a in values]
    out = mx.quantized_matmul(p, *v, transpose=False, group_size=GROUP, bits=bits)  # (B, KVH, rep, 1, Dv)
    return out.reshape(b, h, 1, -1)


def timed(fn, reps: int) -> float:
    mx.eval(fn())  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="4096,32768")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    print(f"# {platform.machine()} {platform.system()}, MLX {mx.__version__}, device {mx.default_device()}")
    print("shape             context  bits  dequantize ms  quantized_matmul ms  max|diff|")
    for name, (heads, kv_heads, width, value_width) in SHAPES.items():
        for n in map(int, args.contexts.split(",")):
            for bits in (8, 4):
                keys = quantized_rows(n, kv_heads, width, bits, seed=2)
                values = None if width != value_width else quantized_rows(n, kv_heads, width, bits, seed=3)
                q = mx.random.normal((1, heads, 1, width), key=mx.random.key(1))  # (B, H, 1, Dk)
                scale = width ** -0.5
                mx.eval(q, keys, values)
                a = dequantized(q, keys, values, bits, scale, value_width)
                b = quantized_matmul(q, keys, values, bits, scale, value_width)
                r = dict(shape=name, context=n, bits=bits, max_diff=mx.abs(a - b).max().item(),
                         dequantize_ms=1e3 * timed(lambda: dequantized(q, keys, values, bits, scale, value_width),
                                                   args.reps),
                         quantized_matmul_ms=1e3 * timed(
                             lambda: quantized_matmul(q, keys, values, bits, scale, value_width), args.reps))
                rows.append(r)
                print(f"{name:17} {n:7}  {bits:4}  {r['dequantize_ms']:13.2f}  {r['quantized_matmul_ms']:19.2f}  "
                      f"{r['max_diff']:.1e}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
