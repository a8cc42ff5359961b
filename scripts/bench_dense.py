#!/usr/bin/env python
"""Dense Llama-shaped benchmark: ours beside mlx-lm, same folder, same run, same timing loop.

    python scripts/bench_dense.py [--openblas] [--trials 3] [--prompt-tokens 512] [--gen-tokens 128] [--json FILE]

Builds once (in --workdir) a random ~156M-parameter Llama (hidden 1024, 8 layers, 16 heads, 4 KV heads,
intermediate 2816, vocab 32000, untied head) as a Hugging Face folder in bfloat16 safetensors with a byte-level
BPE tokenizer, and a 4-bit (group 64) copy converted by mlx-lm. Then for each setting it starts one worker
process per tool (see app/bench.py), warms each up once and takes --trials trials in ABBA order.

Settings (ours = mlxmodels.load(folder, dtype); mlx-lm = mlx_lm.utils.load_model, cast with model.set_dtype):
  float32      bf16 folder, both compute in float32
  bfloat16     bf16 folder, both compute in bfloat16
  q4-float32   4-bit folder, activations/scales in float32
  q4-bfloat16  4-bit folder, activations/scales in bfloat16 (what mlx-lm does by default with that folder)
  default      bf16 folder, each tool's own default (ours: float32 on the CPU backend; mlx-lm: bfloat16)
  q4-default   4-bit folder, each tool's own default
`--check-logits` compares prefill logits with and without the OpenBLAS preload instead of benchmarking.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app import bench  # noqa: E402

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 8,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}

SETTINGS = {  # name -> (folder key, ours dtype, mlx-lm dtype); None = the tool's default
    "float32": ("bf16", "float32", "float32"),
    "bfloat16": ("bf16", "bfloat16", "bfloat16"),
    "q4-float32": ("q4", "float32", "float32"),
    "q4-bfloat16": ("q4", "bfloat16", "bfloat16"),
    "default": ("bf16", None, None),
    "q4-default": ("q4", None, None),
}
# Out of the box on Linux: each tool as installed, ours loading OpenBLAS itself (mlxmodels/blas.py), mlx-lm with
# the wheel's reference BLAS; each at its default dtype. Needs libopenblas0-pthread installed.
AS_INSTALLED = {"as-installed": "bf16", "q4-as-installed": "q4"}


# ---------------------------------------------------------------- the model folders


def make_weights(seed: int = 0) -> dict:
    """Random Llama weights, N(0, 1/fan_in) for projections, N(0, 1) embeddings, ones for norms; bfloat16."""
    import mlx.core as mx

    c = CONFIG
    h, f, d = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    nq, nkv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    key = mx.random.key(seed)
    weights = {}

    def normal(name, shape, std):
        nonlocal key
        key, sub = mx.random.split(key)
        weights[name] = (mx.random.normal(shape, key=sub) * std).astype(mx.bfloat16)

    normal("model.embed_tokens.weight", (c["vocab_size"], h), 1.0)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for name, (out, inp) in {"self_attn.q_proj": (nq, h), "self_attn.k_proj": (nkv, h),
                                 "self_attn.v_proj": (nkv, h), "self_attn.o_proj": (h, nq),
                                 "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f)}.items():
            normal(p + name + ".weight", (out, inp), inp**-0.5)
        weights[p + "input_layernorm.weight"] = mx.ones((h,), mx.bfloat16)
        weights[p + "post_attention_layernorm.weight"] = mx.ones((h,), mx.bfloat16)
    weights["model.norm.weight"] = mx.ones((h,), mx.bfloat16)
    normal("lm_head.weight", (c["vocab_size"], h), h**-0.5)
    mx.eval(weights)
    return weights


def save_tokenizer(folder: Path, vocab_size: int) -> None:
    """A byte-level BPE trained offline on local Python sources (content does not matter, loading does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    import tokenizers

    texts, total = [], 0
    for p in sorted(Path(tokenizers.__file__).resolve().parents[1].rglob("*.py")):  # site-packages
        texts.append(p.read_text(encoding="utf-8", errors="ignore"))
        total += len(texts[-1])
        if total > 8_000_000:
            break
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(folder))


def ensure_folders(workdir: Path) -> dict:
    """-> {"bf16": folder, "q4": folder}; built once, reused while the config matches."""
    import mlx.core as mx

    bf16, q4 = workdir / "llama-150m-bf16", workdir / "llama-150m-q4"
    stamp = json.dumps(CONFIG, sort_keys=True)
    if not (bf16 / "config.json").is_file() or json.dumps(json.loads((bf16 / "config.json").read_text()),
                                                           sort_keys=True) != stamp:
        print(f"building {bf16} ...", flush=True)
        tmp = bf16.with_name(bf16.name + ".tmp")
        subprocess.run(["rm", "-rf", str(tmp), str(bf16), str(q4)], check=True)
        tmp.mkdir(parents=True)
        mx.save_safetensors(str(tmp / "model.safetensors"), make_weights(), metadata={"format": "pt"})
        save_tokenizer(tmp, CONFIG["vocab_size"])
        (tmp / "config.json").write_text(json.dumps(CONFIG, indent=2))  # last: marks the folder complete
        tmp.rename(bf16)
    if not (q4 / "config.json").is_file():
        print(f"converting {q4} (mlx_lm.convert, 4-bit, group 64) ...", flush=True)
        tmp = q4.with_name(q4.name + ".tmp")
        subprocess.run(["rm", "-rf", str(tmp)], check=True)
        from mlx_lm.convert import convert

        convert(str(bf16), str(tmp), quantize=True, q_bits=4, q_group_size=64)
        tmp.rename(q4)
    return {"bf16": str(bf16), "q4": str(q4)}


# ---------------------------------------------------------------- benchmark


def run_pair(name: str, folder: str, d_ours, d_peer, args, as_installed: bool = False) -> dict:
    t0 = time.perf_counter()
    blas = "ours OpenBLAS, mlx-lm reference BLAS" if as_installed else ("OpenBLAS" if args.openblas else "reference BLAS")
    print(f"[{name}] ours {d_ours or 'default'} / mlx-lm {d_peer or 'default'} on {Path(folder).name} "
          f"({blas}) ...", flush=True)
    common = dict(prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens, prefill_step_size=args.prefill_step_size)
    ours = bench.Worker("ours", folder, d_ours, openblas=args.openblas or as_installed, **common)
    peer = bench.Worker("mlx-lm", folder, d_peer, openblas=args.openblas and not as_installed, **common)
    try:
        r_ours, r_peer = bench.run_interleaved(ours, peer, args.trials, own_stats=args.own_stats)
    finally:
        ours.close()
        peer.close()
    same = all(a["tokens"] == b["tokens"] for a, b in zip(r_ours, r_peer))
    for r in r_ours + r_peer:
        r.pop("tokens")
    s_ours, s_peer = bench.summarize(r_ours), bench.summarize(r_peer)
    out = {
        "folder": folder,
        "ours": {"info": ours.info, "summary": s_ours, "trials": r_ours},
        "mlx-lm": {"info": peer.info, "summary": s_peer, "trials": r_peer},
        "ratio": bench.ratios(s_ours, s_peer),
        "same_greedy_tokens": same,
        "interleaved": True,
        "seconds": time.perf_counter() - t0,
    }
    _print_ratio(name, out)
    return out


def _print_ratio(name: str, r: dict) -> None:
    q = r["ratio"]
    print(f"[{name}] ours {r['ours']['info']['dtype']} / mlx-lm {r['mlx-lm']['info']['dtype']}: "
          f"prompt x{q['prompt_tps']:.2f}, gen x{q['generation_tps']:.2f}, peak mem x{q['peak_memory_gb']:.2f}"
          + (f", same greedy tokens {r['same_greedy_tokens']} ({r['seconds']:.0f} s)" if "seconds" in r else ""),
          flush=True)


def run_settings(folders: dict, args) -> dict:
    """Explicit-dtype settings first; a default setting reuses the explicit runs whose dtype each tool's default
    resolves to (checked by loading with no dtype), and runs its own pair only when there is none."""
    results = {}
    explicit = [n for n in args.settings if n in SETTINGS and SETTINGS[n][1] is not None]
    defaults = [n for n in args.settings if n in SETTINGS and SETTINGS[n][1] is None]
    for name in explicit:
        fkey, d_ours, d_peer = SETTINGS[name]
        results[name] = run_pair(name, folders[fkey], d_ours, d_peer, args)
    for name in [n for n in args.settings if n in AS_INSTALLED]:
        results[name] = run_pair(name, folders[AS_INSTALLED[name]], None, None, args, as_installed=True)
    for name in defaults:
        fkey = SETTINGS[name][0]
        picked = {tool: bench.default_dtype(tool, folders[fkey], args.openblas) for tool in ("ours", "mlx-lm")}
        source = {tool: next((n for n in explicit if SETTINGS[n][0] == fkey and SETTINGS[n][1] == picked[tool]), None)
                  for tool in picked}
        if None in source.values():
            results[name] = run_pair(name, folders[fkey], None, None, args)
            continue
        r = {"folder": folders[fkey], "default_dtype": picked, "interleaved": False,
             "from_settings": source}
        for tool, src in source.items():
            r[tool] = results[src][tool]
        r["ratio"] = bench.ratios(r["ours"]["summary"], r["mlx-lm"]["summary"])
        r["same_greedy_tokens"] = None
        results[name] = r
        print(f"[{name}] defaults: ours -> {picked['ours']} (from {source['ours']}), "
              f"mlx-lm -> {picked['mlx-lm']} (from {source['mlx-lm']})", flush=True)
        _print_ratio(name, r)
    return results


def report(results: dict) -> str:
    rows = []
    for name, r in results.items():
        for tool in ("ours", "mlx-lm"):
            rows.append({"setting": name, "tool": tool, "dtype": r[tool]["info"]["dtype"], "summary": r[tool]["summary"]})
        rows.append({"setting": name, "ratio": r["ratio"]})
    return bench.table(rows)


def machine() -> dict:
    import mlx.core as mx
    import mlx_lm

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name")), "?")
    return {"cpu": model, "nproc": os.cpu_count(), "python": platform.python_version(), "mlx": mx.__version__,
            "mlx_lm": mlx_lm.__version__, "platform": platform.platform()}


# ---------------------------------------------------------------- OpenBLAS logits check


def logits_dump(folder: str, dtype: str, tool: str, n: int, out: str) -> None:
    """Worker side of --check-logits: prefill logits (1, n, V) of a fixed prompt, then 8 decode steps' logits."""
    import mlx.core as mx
    import numpy as np

    model, make_cache, _ = bench.load_tool(tool, folder, dtype)
    prompt = mx.random.randint(0, CONFIG["vocab_size"], (1, n), key=mx.random.key(1))
    cache = make_cache()
    logits = [model(prompt, cache=cache).astype(mx.float32)]
    y = mx.argmax(logits[0][:, -1:], axis=-1)
    for _ in range(8):
        step = model(y, cache=cache).astype(mx.float32)
        logits.append(step)
        y = mx.argmax(step, axis=-1)
    np.save(out, np.concatenate([np.array(l[0]) for l in logits], axis=0))


def check_logits(folders: dict, args) -> dict:
    import numpy as np

    out = {}
    tmp = Path(args.workdir) / "logits"
    tmp.mkdir(parents=True, exist_ok=True)
    for name, tool in [(n, t) for n in ("float32", "bfloat16", "q4-float32") for t in ("ours", "mlx-lm")]:
        fkey, dtype, _ = SETTINGS[name]
        arrays = {}
        name = f"{name} {tool}"
        for blas in ("reference", "openblas"):
            env = bench._env(blas == "openblas")
            f = tmp / f"{name.replace(' ', '-')}-{blas}.npy"
            subprocess.run([sys.executable, __file__, "--dump-logits", folders[fkey], dtype, tool, str(f),
                            "--prompt-tokens", str(args.prompt_tokens)], env=env, check=True)
            arrays[blas] = np.load(f)
        a, b = arrays["reference"], arrays["openblas"]
        diff = np.abs(a - b)
        out[name] = {"max_abs_diff": float(diff.max()), "max_abs_logit": float(np.abs(a).max()),
                     "rel_to_max": float(diff.max() / np.abs(a).max()),
                     "argmax_agree": float((a.argmax(-1) == b.argmax(-1)).mean()), "positions": int(a.shape[0])}
        print(f"[logits {name}] {out[name]}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/mlxm-bench", help="where the model folders are built and cached")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--prefill-step-size", type=int, default=512)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS) + list(AS_INSTALLED))
    p.add_argument("--openblas", action="store_true", help=f"LD_PRELOAD {bench.OPENBLAS} in both tools' workers")
    p.add_argument("--own-stats", action="store_true",
                   help="also run each tool's own stream_generate once per setting and keep its stats")
    p.add_argument("--check-logits", action="store_true", help="compare logits with and without OpenBLAS, then exit")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--report", nargs="+", metavar="JSON", help="print the tables of earlier --json files and exit")
    p.add_argument("--dump-logits", nargs=4, metavar=("FOLDER", "DTYPE", "TOOL", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.report:
        for f in args.report:
            doc = json.loads(Path(f).read_text())
            if "results" in doc:
                print(f"\n{f}: {doc['command']}\n")
                print(report(doc["results"]))
        return 0
    if args.dump_logits:
        folder, dtype, tool, out = args.dump_logits
        logits_dump(folder, dtype, tool, args.prompt_tokens, out)
        return 0
    if args.openblas and not Path(bench.OPENBLAS).is_file():
        p.error(f"{bench.OPENBLAS} not found; install it with: apt-get install -y libopenblas0-pthread")
    folders = ensure_folders(Path(args.workdir))
    doc = {"machine": machine(), "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "folders": folders,
           "params": {k: getattr(args, k) for k in ("prompt_tokens", "gen_tokens", "prefill_step_size", "trials",
                                                   "openblas")}}
    if args.check_logits:
        doc["logits_check"] = check_logits(folders, args)
    else:
        doc["results"] = run_settings(folders, args)
        print()
        print(report(doc["results"]))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
