#!/usr/bin/env python
"""Paged KV cache and kernel benchmark.

    python scripts/bench_paged.py [--trials 3] [--prompt-tokens 512] [--gen-tokens 64] [--batches 1,4,8,16]
                                  [--openblas] [--small] [--kernels-only] [--quick-kernels] [--json FILE]

1. Decode at batch 1, contiguous vs paged cache: the same random Llama-shaped model (hidden 1024, 8 layers,
   16 heads, 4 KV heads, head dim 64, intermediate 2816, vocab 32000, as scripts/bench_dense.py; --small: a
   quarter of it) in float32, prompt --prompt-tokens, then --gen-tokens greedy tokens through
   `mlxmodels.generate.generate_step`; generation tok/s = (tokens - 1) / (last - first token time). Trials
   alternate contiguous/paged in ABBA order; medians and the paged/contiguous ratio are reported, and the two
   caches must produce the same tokens.
2. Continuous batching: for each max batch B, 2B requests (prompts of 32 to --prompt-tokens/4 tokens, budgets of
   --gen-tokens/2 to --gen-tokens, so sequences join and leave at different steps) through `BatchGenerator`.
   Aggregate tok/s = generated tokens / wall time (prefills included); decode tok/s counts only the steps in which
   nobody was admitted.
3. Our kernels against MLX's built-ins, the table `mlxm doctor` prints (app/kernel_table.py): per shape the
   variant's self-test, microseconds per call and GB/s read for kernel and built-in (timed by the dispatch in this
   process, as MLXMODELS_KERNELS=auto decides), and auto's pick: qmv and the fused SwiGLU at 1-16 rows of a
   4096x14336 4-bit FFN, paged attention at 2k/8k/32k tokens at batch 1 and 8 (8 KV heads, GQA 4, head dim 128,
   float16), MLA with 16 and 128 heads (R 512, P 64). On a Mac the real kernels; elsewhere the emulator on
   reduced shapes (correctness only: its times mean nothing), as the output and the JSON say.
    --kernels-only skips 1 and 2; --quick-kernels checks one shape per kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"

import mlx.core as mx  # noqa: E402

from mlxmodels.batch import BatchGenerator  # noqa: E402
from mlxmodels.decoder import Decoder  # noqa: E402
from mlxmodels.generate import generate_step  # noqa: E402
from mlxmodels.spec import AttnSpec, FFNSpec, LayerSpec, ModelSpec, RopeSpec  # noqa: E402


def llama(small: bool) -> Decoder:
    hidden, layers, heads, kv, inter, vocab = (1024, 8, 16, 4, 2816, 32000) if not small else (512, 4, 8, 2, 1408, 8000)
    attn = AttnSpec(heads, kv, 64, rope=RopeSpec(64))
    spec = ModelSpec(vocab, hidden, tuple(LayerSpec(attn, FFNSpec(inter)) for _ in range(layers)))
    mx.random.seed(0)
    model = Decoder(spec)
    mx.eval(model.parameters())
    return model


def timed_generation(model, prompt, n, cache):
    """-> (generation tok/s, CPU ms per token, tokens). CPU time (all threads of this process) moves less than
    wall time when other jobs share the machine."""
    times, cpu, tokens = [], [], []
    for tok, _ in generate_step(model, prompt, cache, max_tokens=n):
        times.append(time.perf_counter())
        cpu.append(time.process_time())
        tokens.append(tok)
    return (len(tokens) - 1) / (times[-1] - times[0]), (cpu[-1] - cpu[0]) * 1e3 / (len(tokens) - 1), tokens


def decode_batch1(model, args) -> dict:
    prompt = mx.random.randint(0, model.spec.vocab_size, (args.prompt_tokens,), key=mx.random.key(1)).tolist()
    blocks = -(-(args.prompt_tokens + args.gen_tokens) // 16)
    make = {"contiguous": lambda: model.make_cache(),
            "paged": lambda: model.make_cache(paged=True, num_blocks=blocks, block_size=16)}
    timed_generation(model, prompt, 4, make["paged"]())  # warm-up
    rates, cpu_ms, tokens = {k: [] for k in make}, {k: [] for k in make}, {}
    order = [k for i in range(args.trials) for k in (("contiguous", "paged") if i % 2 == 0 else ("paged", "contiguous"))]
    for kind in order:
        tps, ms, toks = timed_generation(model, prompt, args.gen_tokens, make[kind]())
        rates[kind].append(tps)
        cpu_ms[kind].append(ms)
        tokens[kind] = toks
        print(f"  batch 1 {kind:10s} {tps:7.2f} tok/s, {ms:7.1f} CPU ms/token", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu_ms.items()}
    out = {"median_tps": med, "median_cpu_ms_per_token": med_cpu, "trials": rates, "cpu_trials": cpu_ms,
           "paged_over_contiguous": med["paged"] / med["contiguous"],
           "cpu_paged_over_contiguous": med_cpu["paged"] / med_cpu["contiguous"],
           "same_tokens": tokens["paged"] == tokens["contiguous"]}
    print(f"batch 1: paged / contiguous tok/s = {out['paged_over_contiguous']:.3f}, CPU time per token "
          f"{out['cpu_paged_over_contiguous']:.3f} (same tokens: {out['same_tokens']})", flush=True)
    return out


def continuous(model, args, B: int) -> dict:
    rng = mx.random.key(B)
    n_req = 2 * B
    lo, hi = 32, max(33, args.prompt_tokens // 4)
    lens = mx.random.randint(lo, hi, (n_req,), key=rng).tolist()
    budgets = [args.gen_tokens // 2 + (i * 7) % (args.gen_tokens // 2 + 1) for i in range(n_req)]
    blocks = sum(-(-(p + g) // 16) for p, g in zip(lens, budgets))
    gen = BatchGenerator(model, num_blocks=blocks, block_size=16, max_batch=B)
    for i, (n, g) in enumerate(zip(lens, budgets)):
        gen.add(mx.random.randint(0, model.spec.vocab_size, (n,), key=mx.random.key(100 + i)).tolist(), g)
    total = decode_tokens = 0
    decode_time = 0.0
    t0 = time.perf_counter()
    while not gen.idle:
        before = {r.uid for r in gen.running}
        s = time.perf_counter()
        responses = gen.step()
        dt = time.perf_counter() - s
        total += len(responses)
        if {r.uid for r in gen.running} <= before and all(r.uid in before for r in responses):  # nobody joined
            decode_tokens += len(responses)
            decode_time += dt
    wall = time.perf_counter() - t0
    out = {"requests": n_req, "generated": total, "seconds": wall, "aggregate_tps": total / wall,
           "decode_tps": decode_tokens / decode_time if decode_time else None, "preemptions": gen.preemptions}
    print(f"max batch {B:2d}: {n_req} requests, {total} tokens in {wall:.1f} s: aggregate {out['aggregate_tps']:.1f} "
          f"tok/s, decode-only steps {out['decode_tps'] or 0:.1f} tok/s", flush=True)
    return out


def kernels(quick: bool) -> dict:
    """Our kernels against MLX's built-ins, as `mlxm doctor` reports them (app/kernel_table.py): on a Metal GPU the
    full shapes; elsewhere the emulator on reduced shapes, whose times mean nothing (correctness only)."""
    from app import kernel_table
    from metal_kernels import dispatch

    out = kernel_table.measure(dispatch.current(), quick, emulate=True, progress=lambda line: print(line, flush=True))
    if out["backend"] is None:
        out["note"] = f"skipped: no Metal GPU here, and {out['emulator']}"
    elif out["backend"] == "emulator":
        out["note"] = f"no Metal GPU here: {kernel_table.EMULATED}"
    print(f"kernel vs built-in ({out['backend'] or 'none'}): {out.get('note', 'Metal GPU')}", flush=True)
    for line in filter(None, (out.get("error"), out.get("rows") and kernel_table.format_rows(out["rows"]))):
        print(line, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--batches", default="1,4,8,16", help='max batch sizes; "" skips continuous batching')
    p.add_argument("--openblas", action="store_true", help="preload Debian's OpenBLAS (Linux)")
    p.add_argument("--small", action="store_true", help="a quarter-size model, for a quick run")
    p.add_argument("--skip-decode", action="store_true")
    p.add_argument("--kernels-only", action="store_true", help="only the kernel vs built-in table")
    p.add_argument("--quick-kernels", action="store_true", help="one shape per kernel in the kernel table")
    p.add_argument("--json")
    args = p.parse_args()
    if args.openblas and OPENBLAS not in os.environ.get("LD_PRELOAD", ""):
        os.environ["LD_PRELOAD"] = OPENBLAS
        os.execv(sys.executable, [sys.executable] + sys.argv)
    print(f"mlx {mx.__version__} on {platform.platform()}, device {mx.default_device()}, "
          f"{'OpenBLAS' if args.openblas else 'reference BLAS'}", flush=True)
    result = {"args": vars(args), "mlx": mx.__version__, "platform": platform.platform()}
    if not args.kernels_only:
        model = llama(args.small)
        if not args.skip_decode:
            result["batch1"] = decode_batch1(model, args)
        result["continuous"] = {B: continuous(model, args, int(B)) for B in args.batches.split(",") if B}
    result["kernels"] = kernels(args.quick_kernels)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
