#!/usr/bin/env python
"""Quantized paged KV pool: bytes per token, decode tok/s and accuracy of float, 8-bit and 4-bit blocks.

    python scripts/bench_paged_kv.py [--contexts 1024,4096] [--gen-tokens 16] [--batch 4] [--json FILE]

Two random float32 models: bench_paged.py's Llama shape (hidden 1024, 8 layers, 16 heads, 4 KV heads, head dim 64)
and a DeepSeek-V3-shaped MLA one of the same width (16 heads, latent 512 + rope 64, dense FFN). For each context
and kv_bits in (float, 8, 4), group size 64: `batch` sequences are prefilled to the context (chunks of 512) in one
paged pool, then decode `gen_tokens` greedy steps together; reported: pool bytes per token (every layer, what the
pool allocates per block row), decode tok/s (all rows), and the max |logit| difference and mean KL of the first
decode step against float blocks. A quantized decode step dequantizes its sequences' blocks into a small float
pool and runs the same paged attention entry point as float blocks (the paged Metal kernels read float blocks).
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
from mlxmodels.decoder import Decoder  # noqa: E402
from mlxmodels.spec import FFNSpec, LayerSpec, MLASpec, ModelSpec, RopeSpec  # noqa: E402
from scripts.bench_paged import llama  # noqa: E402

CHUNK = 512


def mla() -> Decoder:
    attn = MLASpec(16, kv_lora_rank=512, qk_nope_head_dim=64, qk_rope_head_dim=64, v_head_dim=64, rope=RopeSpec(64),
                   q_lora_rank=384)
    spec = ModelSpec(32000, 1024, tuple(LayerSpec(attn, FFNSpec(2816)) for _ in range(8)))
    mx.random.seed(0)
    model = Decoder(spec)
    mx.eval(model.parameters())
    return model


def run(model, context: int, batch: int, gen: int, bits):
    """-> (bytes per token, decode tok/s, first decode step's logits (batch, vocab))."""
    blocks = batch * -(-(context + gen) // 16)
    cache = model.make_cache(paged=True, num_blocks=blocks, block_size=16, kv_bits=bits, kv_group_size=64)
    pool = cache.pool
    sids = [pool.active[0]] + [pool.add_sequence() for _ in range(batch - 1)]
    for i, sid in enumerate(sids):
        pool.active = [sid]
        ids = mx.random.randint(0, model.spec.vocab_size, (1, context), key=mx.random.key(i))
        for s in range(0, context, CHUNK):
            mx.eval(model(ids[:, s:s + CHUNK], cache=cache))
    pool.active = sids
    y = mx.zeros((batch, 1), mx.int32)
    first = None
    t0 = time.perf_counter()
    for step in range(gen):
        logits = model(y, cache=cache)[:, -1]
        y = mx.argmax(logits, axis=-1, keepdims=True)
        mx.eval(y)
        if step == 0:
            first = np.array(logits.astype(mx.float32))
            t0 = time.perf_counter()  # the first step (its allocation) is not timed
    tps = batch * (gen - 1) / (time.perf_counter() - t0)
    return sum(c.nbytes for c in cache) / (blocks * 16), tps, first


def kl(p_logits, q_logits) -> float:
    def logp(x):
        x = x.astype(np.float64) - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    p, q = logp(p_logits), logp(q_logits)
    return float((np.exp(p) * (p - q)).sum(-1).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="1024,4096")
    ap.add_argument("--gen-tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    print(f"{platform.machine()} {platform.system()}, MLX {mx.__version__}, default device {mx.default_device()}")
    for name, make in (("llama", lambda: llama(False)), ("mla", mla)):
        model = make()
        for context in (int(c) for c in args.contexts.split(",")):
            ref = None
            for bits in (None, 8, 4):
                per_token, tps, logits = run(model, context, args.batch, args.gen_tokens, bits)
                ref = logits if bits is None else ref
                row = dict(model=name, context=context, batch=args.batch, kv_bits=bits or "float32",
                           bytes_per_token=per_token, decode_tps=tps,
                           max_logit_diff=float(np.abs(logits - ref).max()), kl=kl(ref, logits))
                rows.append(row)
                print(f"{name:5s} ctx {context:5d} x{args.batch} {str(row['kv_bits']):7s} "
                      f"{per_token / 1024:7.1f} KiB/token  {tps:7.1f} tok/s  max|dlogit| {row['max_logit_diff']:.4f}"
                      f"  KL {row['kl']:.2e}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
