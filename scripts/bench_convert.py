#!/usr/bin/env python
"""Convert + 4-bit quantize benchmark: `mlxm convert` beside `mlx_lm.convert`, same source, same run.

    python scripts/bench_convert.py [--models 150m,1b] [--trials 2] [--workdir DIR] [--json FILE] [--keep]

Builds once (in --workdir) random Hugging Face folders in bfloat16 safetensors, written directly (no transformers):
  150m  Llama, hidden 1024, 8 layers, 16 heads / 4 KV heads, intermediate 2816, vocab 32000, untied (156M params)
  1b    Llama-3.2-1B-shaped: hidden 2048, 16 layers, 32 / 8 heads, intermediate 8192, vocab 128256, tied (1.24B)
Then for each model runs each tool in a fresh process, in ABBA order over --trials pairs:
  ours    python -m app.cli convert SRC OUT -q                       (affine 4-bit, group 64, bfloat16)
  mlx-lm  python -m mlx_lm convert --hf-path SRC --mlx-path OUT -q   (the same setting, its defaults)
and reports wall time (process start to exit, imports included) and peak RSS (ru_maxrss of that process, from
wait4), the median over trials, plus each tool's import-only baseline RSS. The two outputs are checked to hold the
same tensors, bit for bit.

The driver itself stays small (no MLX import; building and comparing run in child processes): a child's ru_maxrss
also counts the pages it shares with its parent between fork and exec, so a big driver would inflate every number.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {
    "150m": dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                 intermediate_size=2816, vocab_size=32000, tie_word_embeddings=False),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True),
}
TOOLS = {
    "ours": lambda src, out: [sys.executable, "-m", "app.cli", "convert", str(src), str(out), "-q"],
    "mlx-lm": lambda src, out: [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(src),
                                "--mlx-path", str(out), "-q"],
}
BASELINE = {"ours": "import app.cli, app.convert_cmd, quantize.convert, mlxmodels.formats.safetensors",
            "mlx-lm": "import mlx_lm.convert"}


def shapes(cfg: dict) -> list:
    h, n, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d, inter, vocab = h // n, cfg["intermediate_size"], cfg["vocab_size"]
    out = [("model.embed_tokens.weight", (vocab, h))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (n * d, h)), (p + "self_attn.k_proj.weight", (kv * d, h)),
                (p + "self_attn.v_proj.weight", (kv * d, h)), (p + "self_attn.o_proj.weight", (h, n * d)),
                (p + "mlp.gate_proj.weight", (inter, h)), (p + "mlp.up_proj.weight", (inter, h)),
                (p + "mlp.down_proj.weight", (h, inter))]
    out.append(("model.norm.weight", (h,)))
    if not cfg["tie_word_embeddings"]:
        out.append(("lm_head.weight", (vocab, h)))
    return out


def build(folder: Path, cfg: dict):
    """A random bfloat16 Llama written tensor by tensor (memory: one tensor), with a byte-level tokenizer."""
    import mlx.core as mx
    import numpy as np

    from mlxmodels.formats.safetensors import ShardWriter

    if (folder / "config.json").is_file():
        return
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = dict(cfg, model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu",
                  max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=500000.0, torch_dtype="bfloat16",
                  bos_token_id=1, eos_token_id=2)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    plan = [(name, "BF16", shape) for name, shape in shapes(cfg)]
    writer = ShardWriter(tmp, plan, max_bytes=5 << 30)
    rng = np.random.default_rng(0)
    for name, _, shape in plan:
        if len(shape) == 1:
            w = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
        else:
            w = rng.standard_normal(shape, dtype=np.float32) * shape[1] ** -0.5
        a = mx.array(w).astype(mx.bfloat16)
        mx.eval(a)
        writer.write(name, a)
        del w, a
    writer.finish()
    _tokenizer(tmp)
    tmp.rename(folder)


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet, key=ord))}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))


def measure(cmd: list) -> dict:
    """Run a command in its own process: wall seconds and peak RSS (GB) from wait4."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return {"wall_s": wall, "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def same_tensors(a: Path, b: Path) -> bool:
    import mlx.core as mx

    from mlxmodels.formats.safetensors import Checkpoint

    x, y = Checkpoint(a), Checkpoint(b)
    if x.where.keys() != y.where.keys():
        return False
    ok = all(mx.array_equal(x.array(n), y.array(n)).item() for n in sorted(x.where))
    x.close(), y.close()
    return ok


def child(*args) -> str:
    """Run this script's helper mode in a child process (keeps the driver's memory small)."""
    return subprocess.run([sys.executable, __file__, *map(str, args)], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def run(model: str, trials: int, workdir: Path, keep: bool) -> dict:
    src = workdir / f"src-{model}"
    t = time.perf_counter()
    child("--build", model, src)
    params = sum(math.prod(s) for _, s in shapes(MODELS[model]))
    result = {"model": model, "parameters": params, "source_gb": folder_bytes(src) / 1e9,
              "build_s": time.perf_counter() - t, "trials": {k: [] for k in TOOLS}}
    order = [k for i in range(trials) for k in (("ours", "mlx-lm") if i % 2 == 0 else ("mlx-lm", "ours"))]
    for i, tool in enumerate(order):
        out = workdir / f"out-{model}-{tool}"
        shutil.rmtree(out, ignore_errors=True)
        r = measure(TOOLS[tool](src, out))
        r["output_gb"] = folder_bytes(out) / 1e9
        result["trials"][tool].append(r)
        print(f"  {model} {tool:6s} trial {i // 2 + 1}: {r['wall_s']:.1f} s, peak RSS {r['peak_rss_gb']:.2f} GB",
              flush=True)
        if tool == "mlx-lm" and (workdir / f"out-{model}-ours").exists() and "identical" not in result:
            result["identical"] = child("--compare", workdir / f"out-{model}-ours", out) == "True"
    for tool in TOOLS:
        runs = result["trials"][tool]
        result[tool] = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "peak_rss_gb", "output_gb")}
    if not keep:
        for tool in TOOLS:
            shutil.rmtree(workdir / f"out-{model}-{tool}", ignore_errors=True)
    return result


def main():
    if sys.argv[1:2] == ["--build"]:
        return build(Path(sys.argv[3]), MODELS[sys.argv[2]])
    if sys.argv[1:2] == ["--compare"]:
        return print(same_tensors(Path(sys.argv[2]), Path(sys.argv[3])))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="150m,1b")
    ap.add_argument("--trials", type=int, default=2, help="pairs of runs per model (ABBA order)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mlxm-bench-convert"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the converted folders")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    baseline = {tool: measure([sys.executable, "-c", code]) for tool, code in BASELINE.items()}
    results = [run(m, args.trials, args.workdir, args.keep) for m in args.models.split(",")]
    from importlib.metadata import version

    env = {"python": platform.python_version(), "mlx": version("mlx"), "mlx_lm": version("mlx-lm"),
           "cpus": os.cpu_count(), "machine": platform.machine()}
    print("\nimports alone: " + ", ".join(f"{t} {b['wall_s']:.1f} s, peak RSS {b['peak_rss_gb']:.2f} GB"
                                         for t, b in baseline.items()) + f"; {env}")
    print("\n| model | params | source (bf16) | 4-bit output | tool | wall s | peak RSS GB | RSS / source |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for r in results:
        for tool in TOOLS:
            m = r[tool]
            print(f"| {r['model']} | {r['parameters'] / 1e6:.0f}M | {r['source_gb']:.2f} GB | {m['output_gb']:.2f} GB "
                  f"| {tool} | {m['wall_s']:.1f} | {m['peak_rss_gb']:.2f} | {m['peak_rss_gb'] / r['source_gb']:.2f} |")
        o, l = r["ours"], r["mlx-lm"]
        print(f"|  |  |  |  | ours / mlx-lm | {o['wall_s'] / l['wall_s']:.2f}x | "
              f"{o['peak_rss_gb'] / l['peak_rss_gb']:.2f}x | outputs identical: {r.get('identical')} |")
    if args.json:
        args.json.write_text(json.dumps({"env": env, "imports_only": baseline, "results": results}, indent=2))


if __name__ == "__main__":
    main()
