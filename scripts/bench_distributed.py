#!/usr/bin/env python
"""Several ranks on this machine (loopback, indicative only): tok/s, peak memory and bytes sent per token per mode.

    python scripts/bench_distributed.py [--modes pipeline,tensor,experts] [--prompt-tokens 128] [--gen-tokens 32]
                                        [--quantized] [--json FILE] [--workdir DIR]

Two random float32 models built with transformers (tests/oracle.build_hf): a Llama (hidden 768, 8 layers, 12
heads, 4 KV heads, FFN 2048, vocab 16000) and a Qwen3-MoE (hidden 512, 8 layers, 8 heads, 4 KV heads, 8 experts of
512, top 2, vocab 16000), or with --quantized their 4-bit mlx-lm conversions. Each runs once in one plain process
(1 rank) and once per applicable mode under `mlx.launch --backend ring -n 2` on 127.0.0.1
(tests/distributed/harness.py). Each rank loads, prefills the prompt (one call), then decodes greedily; it reports
prefill and decode tok/s, its parameter bytes, its peak memory while loading and, apart, while running
(mx.get_peak_memory), the median time of one all_sum of a hidden state, and the bytes its collectives sent
(traffic.counted: ring bytes per call) per prompt token during prefill and per token during decode (an eager
pass), beside traffic.computed's figure for the model.

Both ranks share this machine's cores, so 2-rank tok/s measures the modes' overhead here, not a speed-up: on two
Macs each rank would have a whole machine's bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {
    "llama": ("llama", dict(hidden_size=768, num_hidden_layers=8, num_attention_heads=12, num_key_value_heads=4,
                            intermediate_size=2048, vocab_size=16000, max_position_embeddings=4096,
                            tie_word_embeddings=False), ("pipeline", "tensor")),
    "qwen3_moe": ("qwen3_moe", dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                                    num_key_value_heads=4, head_dim=64, intermediate_size=1024, num_experts=8,
                                    num_experts_per_tok=2, moe_intermediate_size=512, vocab_size=16000,
                                    max_position_embeddings=4096, tie_word_embeddings=False),
                  ("pipeline", "tensor", "experts")),
}


# ---------------------------------------------------------------- one rank

COUNTED_STEPS = 4  # eager decode steps whose collectives are counted


def run_steps(model, ids, steps: int, count_from=None) -> tuple:
    """Prefill `ids` in one call, then `steps` greedy decode steps -> (prefill s, decode s). With `count_from`,
    its count is reset after the prefill, so it holds the decode steps alone."""
    import mlx.core as mx

    cache = model.make_cache()
    t0 = time.perf_counter()
    y = mx.argmax(model(ids, cache=cache)[:, -1:], axis=-1)
    mx.eval(y)
    prefill_s = time.perf_counter() - t0
    if count_from is not None:
        count_from.reset()
    t0 = time.perf_counter()
    for _ in range(steps):
        y = mx.argmax(model(y, cache=cache)[:, -1:], axis=-1)
        mx.eval(y)
    return prefill_s, time.perf_counter() - t0


def all_sum_latency(hidden: int, calls: int = 50) -> float:
    """Median seconds of one all_sum of a decode step's hidden state (1, 1, D), each evaluated alone."""
    import mlx.core as mx

    x, times = mx.ones((1, 1, hidden)), []
    for _ in range(calls):
        t0 = time.perf_counter()
        mx.eval(mx.distributed.all_sum(x))
        times.append(time.perf_counter() - t0)
    return sorted(times)[calls // 2]


def worker(folder: str, mode: str, prompt_tokens: int, gen_tokens: int) -> None:
    import mlxmodels  # noqa: F401  (first: it loads a fast BLAS on Linux, which must come before mlx.core)
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten

    from mlxmodels.config import read_config
    from mlxmodels.distributed.traffic import computed, counted
    from mlxmodels.families import build_spec
    from mlxmodels.parts import compiled
    from tests.distributed.harness import write_result

    group = mx.distributed.init()
    with counted() as count:  # before load: a Layout hands its modules the collective functions as it builds them
        model, _ = mlxmodels.load(folder, parallel=None if mode == "single" else mode)
        params = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
        load_peak = mx.get_peak_memory()
        mx.reset_peak_memory()
        ids = mx.array(np.random.default_rng(0).integers(0, model.spec.vocab_size, size=(1, prompt_tokens)))
        prefill_s, decode_s = run_steps(model, ids, gen_tokens)
        peak = mx.get_peak_memory()  # the weights, the prompt's activations, the cache
        # the bytes, from an eager pass: a compiled few-token step replays its trace without calling Python, so the
        # collectives inside it (the FFN half's all_sum) would be counted once per trace, not once per step
        compiled.ENABLED = False
        count.reset()
        run_steps(model, ids, 0)
        prefill_sent = count.total
        count.reset()
        run_steps(model, ids[:, :1], COUNTED_STEPS, count_from=count)
        decode_sent, calls = count.total, dict(count.calls)
    latency = all_sum_latency(model.spec.hidden_size) if group.size() > 1 else 0.0
    whole = build_spec(read_config(Path(folder)), str(Path(folder) / "config.json"))[1]  # a rank's spec may be cut
    expected = computed(whole, "tensor" if mode == "single" else mode, group.size(), itemsize=4)
    write_result({"mode": mode, "ranks": group.size(), "params_bytes": params, "load_peak_bytes": load_peak,
                  "peak_bytes": peak,
                  "prefill_tok_s": prompt_tokens / prefill_s, "decode_tok_s": gen_tokens / decode_s,
                  "prefill_sent_per_token": prefill_sent / prompt_tokens,
                  "decode_sent_per_token": decode_sent / COUNTED_STEPS,
                  "decode_calls_per_token": {k: v / COUNTED_STEPS for k, v in calls.items()},
                  "all_sum_ms": latency * 1e3, "computed_per_token": expected.total,
                  "computed_per_layer": expected.per_layer_average, "layers": len(whole.layers)})


# ---------------------------------------------------------------- the driver


def build(workdir: Path, quantized: bool) -> dict:
    """name -> the random Hugging Face folder, or (quantized) its 4-bit mlx-lm conversion, which the sharded loader
    reads by name and slice straight from the file."""
    from quantize.convert import Options, convert
    from tests.oracle import build_hf

    folders = {}
    for name, (model_type, config, _) in MODELS.items():
        folder = workdir / name
        if not (folder / "config.json").exists():
            build_hf(model_type, folder, **config)
        if quantized and not (workdir / f"{name}-4bit" / "config.json").exists():
            convert(folder, workdir / f"{name}-4bit", Options(quantize=True))
        folders[name] = workdir / f"{name}-4bit" if quantized else folder
    return folders


def run(folder: Path, mode: str, args, out: Path) -> list:
    """Each rank's result for `mode` ("single": one plain process)."""
    from tests.distributed.harness import SHARED_TMP, launch, rank_results

    cmd = [__file__, "--worker", str(folder), mode, str(args.prompt_tokens), str(args.gen_tokens)]
    if mode == "single":
        out.mkdir(parents=True, exist_ok=True)
        SHARED_TMP.mkdir(exist_ok=True)
        env = {**os.environ, "MLXMODELS_TEST_OUT": str(out), "TMPDIR": str(SHARED_TMP)}
        proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=args.timeout)
        proc.stdout += proc.stderr
        return rank_results(out, proc, n=1)
    return rank_results(out, launch(cmd, out, n=2, timeout=args.timeout))


def available(mode: str) -> bool:
    """A mode another helper has not landed yet is skipped (and said so), not failed."""
    from mlxmodels.distributed import MODES

    try:
        MODES[mode]
        return True
    except ImportError:
        return False


def row(model: str, results: list) -> str:
    r0 = results[0]
    ranks = r0["ranks"]
    mb = lambda x: f"{x / 1e6:.1f}"  # noqa: E731
    per_rank = lambda key: " / ".join(mb(r[key]) for r in results)  # noqa: E731
    sent = sum(r["decode_sent_per_token"] for r in results)  # all ranks together, as traffic.computed counts
    prefill_sent = sum(r["prefill_sent_per_token"] for r in results)
    return (f"| {model} | {r0['mode']} | {ranks} | {min(r['prefill_tok_s'] for r in results):.1f} | "
            f"{min(r['decode_tok_s'] for r in results):.1f} | {per_rank('params_bytes')} | "
            f"{per_rank('load_peak_bytes')} | {per_rank('peak_bytes')} | "
            f"{sent / 1e3:.1f} | {r0['computed_per_token'] / 1e3:.1f} | {sent / r0['layers'] / 1e3:.2f} | "
            f"{prefill_sent / 1e3:.1f} | {max(r['all_sum_ms'] for r in results):.2f} |")


HEADER = ("| model | mode | ranks | prefill tok/s | decode tok/s | params MB per rank | load peak MB | run peak MB | "
          "decode KB sent per token (counted) | (computed) | per layer | prefill KB sent per prompt token | "
          "all_sum ms |\n"
          "|---|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        folder, mode, prompt_tokens, gen_tokens = sys.argv[2:6]
        return worker(folder, mode, int(prompt_tokens), int(gen_tokens))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="pipeline,tensor,experts")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--quantized", action="store_true", help="4-bit mlx-lm conversions of the models (group 64)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_distributed_"))
    folders = build(workdir, args.quantized)
    rows, found, missing = [HEADER], {}, []
    for name in args.models.split(","):
        for mode in ["single"] + [m for m in args.modes.split(",") if m in MODELS[name][2]]:
            if mode != "single" and not available(mode):
                missing.append(mode)
                continue
            results = run(folders[name], mode, args, workdir / "out" / f"{folders[name].name}-{mode}")
            found[f"{name}/{mode}"] = results
            rows.append(row(folders[name].name, results))
            print(rows[-1], flush=True)
    print("\n".join(rows))
    if missing:
        print(f"not landed, skipped: {', '.join(sorted(set(missing)))}")
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
