#!/usr/bin/env python
"""What an adapter costs on the fly: decode and prefill tok/s of a base model, the same with a LoRA or DoRA adapter
applied on the fly (mlxmodels/parts/lora.py), and with the adapter fused into the weights (as convert --adapter-path
writes them; a fused model runs exactly as a base one).

    python scripts/bench_adapters.py [--small] [--bits 4] [--rank 8] [--prompt 256] [--tokens 64] [--trials 3]

The model is scripts/bench_paged.py's random Llama-shaped one (float32; --bits quantizes it as convert -q would).
The adapter is random (rank --rank on every linear layer of every block, mlx_lm.lora's default keys), which costs
what a trained one costs. Settings alternate within each trial; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402

from bench_paged import llama, timed_generation  # noqa: E402
from mlxmodels.adapters import LINEARS, Adapter, apply_adapter, fuse_adapter  # noqa: E402


def random_adapter(model, kind: str, rank: int) -> Adapter:
    """Every linear layer of every block adapted, with values of a trained adapter's size."""
    adapter = Adapter(Path("random"), kind, rank, 20.0, len(model.model.layers))
    for path, m in model.named_modules():
        if path.startswith("model.layers.") and isinstance(m, LINEARS):
            out, d_in = m.weight.shape[0], m.weight.shape[1] * (32 // m.bits if "scales" in m else 1)
            t = {"lora_a": mx.random.normal((d_in, rank)) / d_in ** 0.5, "lora_b": mx.random.normal((rank, out)) * 1e-3}
            if kind == "dora":
                t["m"] = mx.ones((out,))
            adapter.modules[path] = t
    return adapter


def build(setting: str, args):
    model = llama(args.small)
    if args.bits:
        nn.quantize(model, 64, args.bits)
    if setting != "base":
        kind = "dora" if setting.startswith("dora") else "lora"
        apply_adapter(model, random_adapter(model, kind, args.rank))
        if setting.endswith("fused"):
            fuse_adapter(model)
    return model


def prefill_tps(model, prompt) -> float:
    cache = model.make_cache()
    t = time.perf_counter()
    mx.eval(model(mx.array([prompt]), cache))
    return len(prompt) / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="a quarter of bench_paged's model")
    p.add_argument("--bits", type=int, choices=[4, 8], default=None, help="quantize the base")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--prompt", type=int, default=256)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--trials", type=int, default=3)
    args = p.parse_args()
    settings = ["base", "lora", "dora", "lora fused"]
    models = {s: build(s, args) for s in settings}
    prompt = mx.random.randint(0, 1000, (args.prompt,), key=mx.random.key(0)).tolist()
    runs = {s: {"prefill": [], "decode": []} for s in settings}
    for s in settings:  # warm-up
        timed_generation(models[s], prompt[:16], 4, models[s].make_cache())
    for _ in range(args.trials):
        for s in settings:
            runs[s]["prefill"].append(prefill_tps(models[s], prompt))
            runs[s]["decode"].append(timed_generation(models[s], prompt[:16], args.tokens, models[s].make_cache())[0])
    base = {k: statistics.median(v) for k, v in runs["base"].items()}
    print(f"| setting | prefill tok/s ({args.prompt}) | decode tok/s | vs base (prefill, decode) |")
    print("|---|---|---|---|")
    for s in settings:
        pre, dec = (statistics.median(runs[s][k]) for k in ("prefill", "decode"))
        print(f"| {s} | {pre:.0f} | {dec:.1f} | {pre / base['prefill']:.2f}x, {dec / base['decode']:.2f}x |")


if __name__ == "__main__":
    main()
