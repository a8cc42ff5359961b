#!/usr/bin/env python
"""Sparse (MoE) and latent-attention (MLA) families: ours beside mlx-lm, same folder, same run (issue 3).

    python scripts/bench_sparse.py [--trials 3] [--prompt-tokens 256] [--gen-tokens 64] [--contexts 4096 32768]
                                   [--parts throughput kv check probe] [--openblas] [--json FILE]

About 11 minutes with the defaults on a 2-core x86 box (results in docs/BENCHMARKS.md). Parts (each model folder
is built once in --workdir with transformers, random weights saved in bfloat16 like real checkpoints):

throughput  A Qwen3-MoE-shaped and a DeepSeek-V3-shaped model (MLA, sigmoid group-limited routing, a shared expert,
            a dense first layer), ~115M parameters each (~0.46 GB in float32). Prompt/generation tok/s, TTFT and peak
            memory, both tools computing in float32, one worker process per tool, trials in ABBA order
            (app/bench.py: the same timing loop around each tool's own model and cache). Then an in-process A/B of
            decode alone (both models in one process, alternating rounds of 16 tokens), less noisy on a shared box.
kv          KV-cache bytes per token and peak memory of one decode step at each context in --contexts, with
            real attention dimensions (DeepSeek-V2-Lite: 16 heads; DeepSeek-V3: 128 heads, q LoRA 1536; both
            kv_lora_rank 512, rope 64, nope 128, v 128) on 2-layer models (dense layer + MoE layer, small hidden),
            computing in bfloat16 (as real checkpoints; float32 would double every cache and not fit here at 32k;
            mlx-lm's stacked experts stay float32 because MLX's CPU gather_mm is float32-only).
            The caches are filled SYNTHETICALLY: a 32k-token prefill would take hours on this CPU, so context-1
            random rows are written through each cache's own update_and_fetch, then one real decode step runs.
            Ours deepseek_v2/v3 (latent cache) vs mlx-lm's deepseek_v2 (expanded per-head K/V) and deepseek_v3
            (latent), plus the theoretical expanded size H * (nope + rope + v). One process per measurement.
            "ours+fold" is ours with LatentCache.attend patched in the worker process (see patch_fold): what a fix
            of the decode attention would give; mlxmodels/ itself is not changed.
check       Decode-step logits at a filled 4k context, float32, V2-Lite dimensions: ours vs mlx-lm on the same
            weights and the same cache contents (for mlx-lm's expanded deepseek_v2 the per-head K/V are computed from
            the same latent rows with its kv_b_proj; for deepseek_v3 both caches hold the same rows), and a control
            (ours on other cache contents) that must differ.
probe       The absorbed-decode attention alone (one KV head, H query heads, S keys): mx.fast.scaled_dot_product_attention
            as ours calls it, as mlx-lm's deepseek_v3 calls it, and with the query heads folded into the query axis.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app import bench  # noqa: E402

VOCAB = 32000  # app.bench draws prompts from ids < 32000

# ---------------------------------------------------------------- model configs (transformers-5 spelling)

V3_YARN = dict(rope_type="yarn", factor=40.0, original_max_position_embeddings=4096, beta_fast=32, beta_slow=1,
               mscale=1.0, mscale_all_dim=1.0)  # DeepSeek-V3's rope_scaling
V2_LITE_YARN = dict(rope_type="yarn", factor=40.0, original_max_position_embeddings=4096, beta_fast=32, beta_slow=1,
                    mscale=0.707, mscale_all_dim=0.707)  # DeepSeek-V2-Lite's rope_scaling

THROUGHPUT = {
    "qwen3-moe-115m": ("qwen3_moe", dict(
        hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
        intermediate_size=1536, moe_intermediate_size=192, num_experts=32, num_experts_per_tok=4, norm_topk_prob=True,
        decoder_sparse_step=1, mlp_only_layers=[], vocab_size=VOCAB, max_position_embeddings=4096,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)),
    "deepseek-v3-115m": ("deepseek_v3", dict(
        hidden_size=512, num_hidden_layers=8, first_k_dense_replace=1, intermediate_size=1536,
        num_attention_heads=16, num_key_value_heads=16, q_lora_rank=256, kv_lora_rank=128, qk_rope_head_dim=32,
        qk_nope_head_dim=64, head_dim=32, v_head_dim=64, n_routed_experts=32, num_experts_per_tok=4, n_group=4,
        topk_group=2, n_shared_experts=1, moe_intermediate_size=192, routed_scaling_factor=2.5, norm_topk_prob=True,
        vocab_size=VOCAB, max_position_embeddings=163840, rope_scaling=V3_YARN, rms_norm_eps=1e-6,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)),
}

# attention dimensions of the real checkpoints; 2 layers (first dense, then MoE), small hidden and experts
ATTN = {
    "v2lite": dict(num_attention_heads=16, num_key_value_heads=16, q_lora_rank=None, kv_lora_rank=512,
                   qk_rope_head_dim=64, qk_nope_head_dim=128, head_dim=64, v_head_dim=128, rope_scaling=V2_LITE_YARN),
    "v3": dict(num_attention_heads=128, num_key_value_heads=128, q_lora_rank=1536, kv_lora_rank=512,
               qk_rope_head_dim=64, qk_nope_head_dim=128, head_dim=64, v_head_dim=128, rope_scaling=V3_YARN),
}
SMALL = dict(hidden_size=512, num_hidden_layers=2, first_k_dense_replace=1, intermediate_size=1024,
             n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=128,
             vocab_size=2048, max_position_embeddings=163840, rms_norm_eps=1e-6, tie_word_embeddings=False,
             bos_token_id=1, eos_token_id=2)
ROUTING = {"deepseek_v2": dict(topk_method="greedy", routed_scaling_factor=1.0),  # as V2-Lite
           "deepseek_v3": dict(n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True)}


def kv_folders() -> dict:
    """name -> (model_type, config): every (attention dims, model_type) pair."""
    return {f"{dims}-{mt}": (mt, dict(SMALL, **ATTN[dims], **ROUTING[mt])) for dims in ATTN for mt in ROUTING}


# ---------------------------------------------------------------- building folders


def build_folder(folder: Path, model_type: str, config: dict) -> str:
    """Random transformers model -> bfloat16 safetensors + legacy-dialect config.json (both tools read it)."""
    stamp = json.dumps([model_type, config], sort_keys=True)
    if (folder / "stamp.json").is_file() and (folder / "stamp.json").read_text() == stamp:
        return str(folder)
    import torch

    from tests.dialects import legacy
    from tests.oracle import build_hf

    print(f"building {folder} ...", flush=True)
    tmp = folder.with_name(folder.name + ".tmp")
    subprocess.run(["rm", "-rf", str(tmp), str(folder)], check=True)
    model = build_hf(model_type, tmp, seed=0, **config)
    model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)  # like real checkpoints
    cfg = json.loads((tmp / "config.json").read_text())
    (tmp / "config.json").write_text(json.dumps(legacy(cfg), indent=2))
    (tmp / "stamp.json").write_text(stamp)
    tmp.rename(folder)
    del model
    gc.collect()
    return str(folder)


def param_count(folder: str) -> int:
    from safetensors import safe_open

    total = 0
    for f in Path(folder).glob("*.safetensors"):
        with safe_open(str(f), "np") as s:
            for k in s.keys():
                shape = s.get_slice(k).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += n
    return total


def active_params(model_type: str, c: dict) -> int:
    """Parameters one decode token reads (embedding row, attention, chosen + shared experts, router, head)."""
    h, L, V = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
    if model_type == "qwen3_moe":
        H, kv, d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        attn = h * H * d * 2 + h * kv * d * 2
        ffn = c["num_experts_per_tok"] * 3 * h * c["moe_intermediate_size"] + c["num_experts"] * h
        return h + L * (attn + ffn) + V * h
    H, r, nope, rope, v = (c["num_attention_heads"], c["kv_lora_rank"], c["qk_nope_head_dim"], c["qk_rope_head_dim"],
                           c["v_head_dim"])
    q = h * c["q_lora_rank"] + c["q_lora_rank"] * H * (nope + rope) if c.get("q_lora_rank") else h * H * (nope + rope)
    attn = q + h * (r + rope) + H * r * (nope + v) + H * v * h
    dense = 3 * h * c["intermediate_size"]
    moe = (c["num_experts_per_tok"] + c["n_shared_experts"]) * 3 * h * c["moe_intermediate_size"] + c["n_routed_experts"] * h
    k = c["first_k_dense_replace"]
    return h + L * attn + k * dense + (L - k) * moe + V * h


# ---------------------------------------------------------------- machine


def machine() -> dict:
    import platform

    import mlx.core as mx
    import mlx_lm

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name")), "?")
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return {"cpu": model, "nproc": nproc, "python": platform.python_version(), "mlx": mx.__version__,
            "mlx_lm": mlx_lm.__version__, "platform": platform.platform()}


def read_bandwidth() -> float:
    """GB/s of a float32 vector-matrix product x @ W.T (nn.Linear's layout) over a 256 MB matrix, best of 7:
    what decode can hope to stream here (decode reads every active weight once per token)."""
    import mlx.core as mx

    w = mx.random.normal((8192, 8192))
    x = mx.random.normal((1, 8192))
    mx.eval(w, x)
    times = []
    for _ in range(7):
        t = time.perf_counter()
        mx.eval(x @ w.T)
        times.append(time.perf_counter() - t)
    return w.nbytes / min(times) / 1e9


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------- part 1: throughput


def run_throughput(workdir: Path, args) -> dict:
    out = {"bandwidth_gbs": read_bandwidth()}
    print(f"[throughput] float32 matrix-vector read bandwidth: {out['bandwidth_gbs']:.1f} GB/s", flush=True)
    for name, (model_type, config) in THROUGHPUT.items():
        folder = build_folder(workdir / name, model_type, config)
        t0 = time.perf_counter()
        common = dict(prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens,
                      prefill_step_size=args.prefill_step_size, openblas=args.openblas)
        ours = bench.Worker("ours", folder, "float32", **common)
        peer = bench.Worker("mlx-lm", folder, "float32", **common)
        try:
            r_ours, r_peer = bench.run_interleaved(ours, peer, args.trials)
        finally:
            ours.close()
            peer.close()
        same = all(a["tokens"] == b["tokens"] for a, b in zip(r_ours, r_peer))
        agree = [sum(x == y for x, y in zip(a["tokens"], b["tokens"])) for a, b in zip(r_ours, r_peer)]
        for r in r_ours + r_peer:
            r.pop("tokens")
        s_ours, s_peer = bench.summarize(r_ours), bench.summarize(r_peer)
        active = active_params(model_type, config) * 4
        out[name] = {"folder": folder, "params": param_count(folder), "active_bytes_per_token_f32": active,
                     "ours": {"info": ours.info, "summary": s_ours, "trials": r_ours},
                     "mlx-lm": {"info": peer.info, "summary": s_peer, "trials": r_peer},
                     "ratio": bench.ratios(s_ours, s_peer), "same_greedy_tokens": same,
                     "greedy_tokens_agreeing": agree, "seconds": time.perf_counter() - t0}
        p = subprocess.run([sys.executable, __file__, "--paired-worker", folder, str(args.paired_rounds), "16",
                            str(args.prompt_tokens)], capture_output=True, text=True, cwd=str(ROOT),
                           timeout=args.kv_timeout)
        if p.returncode == 0:
            out[name]["paired_decode"] = json.loads(p.stdout.strip().splitlines()[-1])
            pr = out[name]["paired_decode"]["paired_ratio"]
            print(f"[paired decode {name}] ours/mlx-lm {pr['median']:.2f} [{pr['min']:.2f}-{pr['max']:.2f}]", flush=True)
        else:
            print(f"[paired decode {name}] FAILED: {p.stderr[-600:]}", flush=True)
        q = out[name]["ratio"]
        print(f"[throughput {name}] ours/mlx-lm: prompt x{q['prompt_tps']:.2f}, gen x{q['generation_tps']:.2f}, "
              f"peak x{q['peak_memory_gb']:.2f}; same greedy tokens {same} ({out[name]['seconds']:.0f} s)", flush=True)
    return out


def paired_worker(folder: str, rounds: int, tokens: int, context: int) -> dict:
    """Both tools' models in one process, decoding `tokens` tokens (one eval per token) in alternating rounds
    (ABBA...): on a shared machine, fine-grained interleaving makes the decode ratio far less noisy."""
    import mlx.core as mx

    tools = {t: bench.load_tool(t, folder, "float32") for t in ("ours", "mlx-lm")}
    prompt = mx.random.randint(0, VOCAB, (1, context), key=mx.random.key(0))
    caches = {}
    for t, (model, make_cache, _) in tools.items():
        caches[t] = make_cache()
        mx.eval(model(prompt, cache=caches[t]))

    def run(t, n):
        model, c = tools[t][0], caches[t]
        y = mx.array([[5]])
        tic = time.perf_counter()
        for _ in range(n):
            y = mx.argmax(model(y, cache=c)[:, -1:], axis=-1)
            mx.eval(y)
        return n / (time.perf_counter() - tic)

    for t in tools:
        run(t, 4)  # warm-up
    res = {t: [] for t in tools}
    for i in range(rounds):
        for t in (("ours", "mlx-lm") if i % 2 == 0 else ("mlx-lm", "ours")):
            res[t].append(run(t, tokens))
    paired = [a / b for a, b in zip(res["ours"], res["mlx-lm"])]
    return {"tps": res, "median_tps": {t: statistics.median(v) for t, v in res.items()},
            "paired_ratio": {"median": statistics.median(paired), "min": min(paired), "max": max(paired)},
            "rounds": rounds, "tokens": tokens, "context": context}


def throughput_table(res: dict) -> str:
    bw = res["bandwidth_gbs"]
    lines = ["| model | tool | prompt tok/s | gen tok/s | TTFT s | peak GB | gen bound tok/s | of bound |",
             "|---|---|---|---|---|---|---|---|"]
    for name in THROUGHPUT:
        if name not in res:
            continue
        r = res[name]
        bound = bw * 1e9 / r["active_bytes_per_token_f32"]
        for tool in ("ours", "mlx-lm"):
            s = r[tool]["summary"]
            lines.append(f"| {name} | {tool} | {bench.fmt_spread(s['prompt_tps'])} | "
                         f"{bench.fmt_spread(s['generation_tps'])} | {bench.fmt_spread(s['ttft_s'], 2)} | "
                         f"{bench.fmt_spread(s['peak_memory_gb'], 3)} | {bound:.0f} | "
                         f"{s['generation_tps']['median'] / bound:.0%} |")
        q = r["ratio"]
        lines.append(f"| {name} | **ours ÷ mlx-lm** | **{q['prompt_tps']:.2f}** | **{q['generation_tps']:.2f}** | "
                     f"{q['ttft_s']:.2f} | {q['peak_memory_gb']:.2f} | | |")
        if "paired_decode" in r:
            pd = r["paired_decode"]
            pr = pd["paired_ratio"]
            lines.append(f"| {name} | in-process A/B decode, {pd['rounds']} x {pd['tokens']} tokens each | | "
                         f"ours {pd['median_tps']['ours']:.1f}, mlx-lm {pd['median_tps']['mlx-lm']:.1f}; "
                         f"**ours ÷ mlx-lm {pr['median']:.2f}** [{pr['min']:.2f}-{pr['max']:.2f}] | | | | |")
    return "\n".join(lines)


# ---------------------------------------------------------------- part 2/3: filled caches, one decode step


def fill_rows(n: int, width: int, layer: int, seed: int, dtype):
    """The synthetic cache rows [latent, k_rope] of one layer: (1, 1, n, width), identical for every tool."""
    import mlx.core as mx

    return mx.random.normal((1, 1, n, width), key=mx.random.key(seed * 1000 + layer)).astype(dtype)


def fill_cache(tool: str, model, cache: list, n: int, fill: str, seed: int, dtype, cfg: dict) -> None:
    """Write n synthetic tokens into every layer's cache through the cache's own update_and_fetch."""
    import mlx.core as mx

    r, rope, nope, v_dim, H = (cfg["kv_lora_rank"], cfg["qk_rope_head_dim"], cfg["qk_nope_head_dim"],
                               cfg["v_head_dim"], cfg["num_attention_heads"])
    expanded = tool == "mlx-lm" and cfg["model_type"] == "deepseek_v2"
    for i, c in enumerate(cache):
        if expanded and fill == "random":
            # per-head K/V of the expanded cache; a random 1024-token block tiled (generating 32k x 128 heads of
            # fresh normals takes minutes here, and the contents do not change memory)
            blk = min(n, 1024)
            key = mx.random.key(seed * 1000 + 500 + i)
            k1, k2 = mx.random.split(key)
            kb = mx.random.normal((1, H, blk, nope + rope), key=k1).astype(dtype)
            vb = mx.random.normal((1, H, blk, v_dim), key=k2).astype(dtype)
            reps = (n + blk - 1) // blk
            keys = mx.tile(kb, (1, 1, reps, 1))[:, :, :n]
            values = mx.tile(vb, (1, 1, reps, 1))[:, :, :n]
            c.update_and_fetch(keys, values)
        else:
            rows = fill_rows(n, r + rope, i, seed, dtype)
            if tool == "ours":
                c.update_and_fetch(rows)
            elif not expanded:  # mlx-lm deepseek_v3: keys = latent, values = k_pe
                c.update_and_fetch(rows[..., :r], rows[..., r:])
            else:  # mlx-lm deepseek_v2, "derived": the per-head K/V its own kv_b_proj makes from the same latents
                attn = model.model.layers[i].self_attn
                kv = attn.kv_b_proj(rows[:, 0, :, :r])  # (1, n, H * (nope + v))
                kv = kv.reshape(1, n, H, nope + v_dim).transpose(0, 2, 1, 3)
                k_nope, values = kv[..., :nope], kv[..., nope:]
                k_pe = mx.broadcast_to(rows[..., r:], (1, H, n, rope))
                c.update_and_fetch(mx.concatenate([k_nope, k_pe], axis=-1), values)
        mx.eval([a for a in c.state if isinstance(a, mx.array)])


def patch_fold() -> None:
    """What-if, in this process only: LatentCache.attend with the H query heads folded into the query axis for a
    one-token step (one KV head, H*1 queries, no mask), so MLX's CPU fallback never broadcasts the cache per head."""
    import mlx.core as mx

    from mlxmodels.parts import cache as cache_mod

    original = cache_mod.LatentCache.attend

    def attend(self, q, rows, values, scale, softcap=None):
        B, H, T, D = q.shape
        if T != 1 or softcap is not None:
            return original(self, q, rows, values, scale, softcap)
        rows = self.update_and_fetch(rows)
        o = mx.fast.scaled_dot_product_attention(q.reshape(B, 1, H, D), rows, rows[..., : self.value_dims],
                                                 scale=scale)
        return o.reshape(B, H, 1, -1)

    cache_mod.LatentCache.attend = attend


def kv_worker(spec: dict) -> dict:
    """One measurement in its own process: load, warm up, fill to context - 1, one decode step."""
    import mlx.core as mx
    import numpy as np

    cfg = json.loads((Path(spec["folder"]) / "config.json").read_text())
    if spec.get("variant") == "fold":
        patch_fold()
    model, make_cache, dt = bench.load_tool(spec["tool"], spec["folder"], spec["dtype"])
    dtype = getattr(mx, dt)
    if spec["tool"] == "mlx-lm" and dtype != mx.float32 and mx.default_device() == mx.cpu:
        # MLX's CPU gather_mm is float32-only: keep mlx-lm's stacked experts in float32 (ours casts around the
        # call itself); attention and caches stay in `dtype`
        for layer in model.model.layers:
            if hasattr(layer.mlp, "switch_mlp"):
                layer.mlp.switch_mlp.set_dtype(mx.float32)
    wbytes = bench.weight_bytes(model)
    warm = make_cache()  # warm-up on a tiny context: first-call costs out of the timed step
    mx.eval(model(mx.array([[5, 6, 7]]), cache=warm))
    mx.eval(model(mx.array([[8]]), cache=warm))
    del warm
    cache = make_cache()
    n = spec["context"] - 1
    t0 = time.perf_counter()
    fill_cache(spec["tool"], model, cache, n, spec["fill"], spec["seed"], dtype, cfg)
    fill_s = time.perf_counter() - t0
    for c in cache:  # mlx-lm's cache reads its position from offset; ours too
        assert c.offset == n, (c.offset, n)
    gc.collect()
    mx.clear_cache()
    active = mx.get_active_memory()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    logits = model(mx.array([[11]]), cache=cache)[0, -1].astype(mx.float32)
    mx.eval(logits)
    step_s = time.perf_counter() - t0
    peak = mx.get_peak_memory()
    layer_bytes = [c.nbytes for c in cache]
    state_shapes = [[list(a.shape) for a in c.state if isinstance(a, mx.array)] for c in cache]
    if spec.get("logits_out"):
        np.save(spec["logits_out"], np.array(logits))
    return {"tool": spec["tool"], "variant": spec.get("variant"), "model_type": cfg["model_type"], "dtype": dt, "context": spec["context"],
            "offset": cache[0].offset, "weight_bytes": wbytes, "cache_bytes": sum(layer_bytes),
            "kv_bytes_per_token_per_layer": [b / cache[0].offset for b in layer_bytes], "state_shapes": state_shapes,
            "active_before_step": active, "peak_step": peak, "transient_step": peak - active,
            "step_s": step_s, "fill_s": fill_s, "fill": spec["fill"]}


def run_kv_spec(spec: dict, timeout: int) -> dict:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, __file__, "--kv-worker", json.dumps(spec)], capture_output=True, text=True,
                       cwd=str(ROOT), env=env, timeout=timeout)
    if p.returncode != 0:
        why = f"killed by {signal.Signals(-p.returncode).name}" if p.returncode < 0 else f"exit {p.returncode}"
        return {"error": f"{why}: " + (p.stderr or p.stdout)[-2000:], "returncode": p.returncode}
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["wall_s"] = time.perf_counter() - t0
    return r


def theoretical(cfg: dict, bytes_per: int) -> dict:
    H, r, rope, nope, v = (cfg["num_attention_heads"], cfg["kv_lora_rank"], cfg["qk_rope_head_dim"],
                           cfg["qk_nope_head_dim"], cfg["v_head_dim"])
    return {"latent": (r + rope) * bytes_per, "expanded": H * (nope + rope + v) * bytes_per}


TOOLS_KV = {  # label -> (tool, variant)
    "ours": ("ours", None),
    "ours+fold": ("ours", "fold"),  # what-if: ours with decode attention folded (patched in this script only)
    "mlx-lm": ("mlx-lm", None),
}


def run_kv(workdir: Path, args) -> dict:
    folders = {name: build_folder(workdir / name, mt, cfg) for name, (mt, cfg) in kv_folders().items()}
    out = {"folders": folders, "runs": [], "logits": {}}
    ldir = workdir / "logits"
    ldir.mkdir(exist_ok=True)
    done = {}
    for ctx in sorted(args.contexts):
        for name, folder in folders.items():
            for label, (tool, variant) in TOOLS_KV.items():
                if variant == "fold" and not name.endswith("deepseek_v3"):
                    continue  # ours' deepseek_v2 and deepseek_v3 share the attention and cache
                key = (name, label)
                spec = {"folder": folder, "tool": tool, "variant": variant, "dtype": "bfloat16", "context": ctx,
                        "fill": "random", "seed": 1, "logits_out": str(ldir / f"{name}-{label}-{ctx}.npy")}
                prev = done.get(key)
                if prev and "peak_step" in prev:  # peak minus weights scales with the context
                    need = prev["weight_bytes"] + (prev["peak_step"] - prev["weight_bytes"]) * ctx / prev["context"]
                    need *= 1.6  # filling holds a source copy and, while growing, two buffers
                    avail = mem_available()
                    if need > avail - 2e9:
                        r = {"skipped": f"predicted {need / 1e9:.1f} GB > available {avail / 1e9:.1f} GB - 2 GB"}
                        out["runs"].append(dict(r, name=name, tool=label, context=ctx))
                        print(f"[kv {name} {label} {ctx}] {r['skipped']}", flush=True)
                        continue
                try:
                    r = run_kv_spec(spec, args.kv_timeout)
                except subprocess.TimeoutExpired:
                    r = {"error": f"timed out after {args.kv_timeout} s"}
                r.update(name=name, tool=label, context=ctx)
                out["runs"].append(r)
                if "error" in r:
                    print(f"[kv {name} {label} {ctx}] FAILED: {r['error'][-600:]}", flush=True)
                    continue
                done[key] = r
                print(f"[kv {name} {label} {ctx}] {r['kv_bytes_per_token_per_layer'][0]:.0f} B/token/layer, "
                      f"cache {r['cache_bytes'] / 1e6:.1f} MB, weights {r['weight_bytes'] / 1e6:.0f} MB, "
                      f"peak {r['peak_step'] / 1e9:.3f} GB (step transient {r['transient_step'] / 1e9:.3f} GB), "
                      f"step {r['step_s']:.2f} s, fill {r['fill_s']:.1f} s, wall {r['wall_s']:.0f} s", flush=True)
        # same weights and same latent rows: ours deepseek_v3 (as is, and folded) vs mlx-lm deepseek_v3
        for dims in ATTN:
            f = {label: ldir / f"{dims}-deepseek_v3-{label}-{ctx}.npy" for label in TOOLS_KV}
            for a, b in (("ours", "mlx-lm"), ("ours+fold", "mlx-lm"), ("ours+fold", "ours")):
                if f[a].is_file() and f[b].is_file():
                    out["logits"][f"{dims} deepseek_v3 {ctx} bfloat16: {a} vs {b}"] = compare(f[a], f[b])
            for x in f.values():
                x.unlink(missing_ok=True)
    return out


def compare(a, b) -> dict:
    import numpy as np

    x, y = np.load(a), np.load(b)
    d = np.abs(x - y)
    return {"max_abs_diff": float(d.max()), "max_abs_logit": float(np.abs(x).max()),
            "rel_to_max": float(d.max() / np.abs(x).max()), "argmax_equal": bool(x.argmax() == y.argmax()),
            "top10_equal": bool((np.argsort(-x)[:10] == np.argsort(-y)[:10]).all())}


def run_check(workdir: Path, args) -> dict:
    """float32, 4k, V2-Lite dimensions, same weights and same cache contents."""
    out = {}
    ldir = workdir / "logits"
    ldir.mkdir(exist_ok=True)
    ctx = 4096
    for mt in ROUTING:
        name = f"v2lite-{mt}"
        folder = build_folder(workdir / name, *kv_folders()[name])
        files = {}
        for tool in ("ours", "mlx-lm"):
            f = ldir / f"check-{name}-{tool}.npy"
            spec = {"folder": folder, "tool": tool, "dtype": "float32", "context": ctx, "fill": "derived", "seed": 2,
                    "logits_out": str(f)}
            r = run_kv_spec(spec, args.kv_timeout)
            if "error" in r:
                print(f"[check {name} {tool}] FAILED: {r['error'][-600:]}", flush=True)
                break
            files[tool] = f
            out[f"{name} {tool} run"] = {k: r[k] for k in ("kv_bytes_per_token_per_layer", "cache_bytes",
                                                          "weight_bytes", "peak_step", "transient_step", "step_s")}
        if len(files) == 2:
            out[f"{name} {ctx} float32"] = compare(files["ours"], files["mlx-lm"])
            # control: the same comparison against ours on other cache contents must fail
            f = ldir / f"check-{name}-ours-seed3.npy"
            r = run_kv_spec({"folder": folder, "tool": "ours", "dtype": "float32", "context": ctx, "fill": "derived",
                             "seed": 3, "logits_out": str(f)}, args.kv_timeout)
            if "error" not in r:
                out[f"{name} {ctx} float32"]["control_other_fill"] = compare(files["mlx-lm"], f)
            print(f"[check {name}] {out[f'{name} {ctx} float32']}", flush=True)
    return out


# ---------------------------------------------------------------- part 4: the attention alone


def probe_worker(H: int, S: int, dtype_name: str) -> dict:
    import mlx.core as mx

    dtype = getattr(mx, dtype_name)
    r, rope = 512, 64
    q = mx.random.normal((1, H, 1, r + rope), key=mx.random.key(0)).astype(dtype)
    rows = mx.random.normal((1, 1, S, r + rope), key=mx.random.key(1)).astype(dtype)
    mx.eval(q, rows)

    latent, k_pe = mx.contiguous(rows[..., :r]), mx.contiguous(rows[..., r:])  # mlx-lm's two cache buffers
    mx.eval(latent, k_pe)

    def ours():  # LatentCache.attend at decode: keys = rows, values = rows[..., :kv_lora] (a strided view)
        return mx.fast.scaled_dot_product_attention(q, rows, rows[..., :r], scale=0.07, mask=None)

    def mlx_lm():  # mlx-lm deepseek_v3 at decode: contiguous latent as keys and values, rope scores as a mask
        pe = (q[..., r:] * 0.07) @ k_pe.swapaxes(-1, -2)  # (1, H, 1, S)
        return mx.fast.scaled_dot_product_attention(q[..., :r], latent, latent, scale=0.07, mask=pe)

    def folded():  # ours with the H query heads as H queries of the one KV head (decode: no mask needed)
        o = mx.fast.scaled_dot_product_attention(q.reshape(1, 1, H, r + rope), rows, rows[..., :r], scale=0.07)
        return o.reshape(1, H, 1, r)

    res = {}
    for name, f in (("ours", ours), ("mlx_lm", mlx_lm), ("folded", folded)):
        mx.eval(f())
        times, transient = [], 0
        for _ in range(3):
            gc.collect()
            mx.clear_cache()
            base = mx.get_active_memory()
            mx.reset_peak_memory()
            t = time.perf_counter()
            mx.eval(f())
            times.append(time.perf_counter() - t)
            transient = max(transient, mx.get_peak_memory() - base)
        res[name] = {"ms": statistics.median(times) * 1e3, "transient_bytes": transient}
    ref = ours().astype(mx.float32)
    res["max_abs_diff"] = {k: float(mx.abs(f().astype(mx.float32) - ref).max()) for k, f in (("mlx_lm", mlx_lm),
                                                                                            ("folded", folded))}
    return res


def run_probe(args) -> dict:
    out = {}
    for H, S, dt in args.probe_cases:
        p = subprocess.run([sys.executable, __file__, "--probe-worker", str(H), str(S), dt], capture_output=True,
                           text=True, cwd=str(ROOT), timeout=args.kv_timeout)
        if p.returncode != 0:
            print(f"[probe H={H} S={S} {dt}] FAILED: {p.stderr[-600:]}", flush=True)
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        out[f"H={H} S={S} {dt}"] = r
        print(f"[probe H={H} S={S} {dt}] " + ", ".join(
            f"{k} {r[k]['ms']:.0f} ms / {r[k]['transient_bytes'] / 1e6:.0f} MB" for k in ("ours", "mlx_lm", "folded"))
            + f"; max diff vs ours {r['max_abs_diff']}", flush=True)
    return out


# ---------------------------------------------------------------- report


def kv_table(res: dict) -> str:
    kvf = kv_folders()
    lines = ["| dims | model_type | tool | cache kind | context | KV B/token/layer | cache MB | weights MB | "
             "peak GB (decode step) | step transient GB | step s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        name = r["name"]
        dims, mt = name.split("-", 1)
        kind = "expanded per-head K/V" if (mt == "deepseek_v2" and r.get("tool") == "mlx-lm") else "latent"
        if "skipped" in r or "error" in r:
            why = r.get("skipped") or r["error"].split(":")[0]
            lines.append(f"| {dims} | {mt} | {r.get('tool', '?')} | {kind} | {r.get('context', '?')} | "
                         f"**{why}** | | | | | |")
            continue
        lines.append(f"| {dims} | {mt} | {r['tool']} | {kind} | {r['context']} | "
                     f"{r['kv_bytes_per_token_per_layer'][0]:.0f} | {r['cache_bytes'] / 1e6:.1f} | "
                     f"{r['weight_bytes'] / 1e6:.0f} | {r['peak_step'] / 1e9:.3f} | {r['transient_step'] / 1e9:.3f} | "
                     f"{r['step_s']:.2f} |")
    lines.append("")
    lines.append("| dims | heads | latent B/token/layer (bf16 / f32) | expanded H·(nope+rope+v) (bf16 / f32) | "
                 "expanded ÷ latent |")
    lines.append("|---|---|---|---|---|")
    for dims in ATTN:
        cfg = dict(kvf[f"{dims}-deepseek_v3"][1])
        t2, t4 = theoretical(cfg, 2), theoretical(cfg, 4)
        lines.append(f"| {dims} | {cfg['num_attention_heads']} | {t2['latent']} / {t4['latent']} | "
                     f"{t2['expanded']} / {t4['expanded']} | {t2['expanded'] / t2['latent']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/mlxm-bench-sparse")
    p.add_argument("--parts", nargs="+", default=["throughput", "kv", "check", "probe"],
                   choices=["throughput", "kv", "check", "probe"])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--prefill-step-size", type=int, default=512)
    p.add_argument("--openblas", action="store_true", help=f"throughput workers LD_PRELOAD {bench.OPENBLAS}")
    p.add_argument("--contexts", nargs="+", type=int, default=[4096, 32768])
    p.add_argument("--kv-timeout", type=int, default=120, help="seconds per kv/check/probe process")
    p.add_argument("--probe-cases", nargs="+", type=lambda s: (int(s.split(",")[0]), int(s.split(",")[1]),
                                                                s.split(",")[2]),
                   default=[(16, 4096, "float32"), (128, 4096, "float32"), (128, 4096, "bfloat16")],
                   metavar="H,S,DTYPE")
    p.add_argument("--json", help="write all results here")
    p.add_argument("--kv-worker", help=argparse.SUPPRESS)
    p.add_argument("--probe-worker", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--paired-worker", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--paired-rounds", type=int, default=12, help="rounds of 16 decode tokens per tool, in-process A/B")
    args = p.parse_args(argv)

    if args.kv_worker:
        print(json.dumps(kv_worker(json.loads(args.kv_worker))))
        return 0
    if args.paired_worker:
        folder, rounds, tokens, context = args.paired_worker
        print(json.dumps(paired_worker(folder, int(rounds), int(tokens), int(context))))
        return 0
    if args.probe_worker:
        H, S, dt = args.probe_worker
        print(json.dumps(probe_worker(int(H), int(S), dt)))
        return 0

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    doc = {"machine": machine(), "command": " ".join(["python", "scripts/bench_sparse.py"] + sys.argv[1:]),
           "params": {k: getattr(args, k) for k in ("trials", "prompt_tokens", "gen_tokens", "prefill_step_size",
                                                   "openblas", "contexts")}}
    print(json.dumps(doc["machine"]), flush=True)
    if "throughput" in args.parts:
        doc["throughput"] = run_throughput(workdir, args)
    if "kv" in args.parts:
        doc["kv"] = run_kv(workdir, args)
    if "check" in args.parts:
        doc["check"] = run_check(workdir, args)
    if "probe" in args.parts:
        doc["probe"] = run_probe(args)
    doc["seconds"] = time.perf_counter() - t0
    print()
    if "throughput" in doc:
        print(throughput_table(doc["throughput"]), "\n")
    if "kv" in doc:
        print(kv_table(doc["kv"]), "\n")
        for k, v in doc["kv"]["logits"].items():
            print(f"logits {k}: {v}")
    for k, v in doc.get("check", {}).items():
        print(f"check {k}: {v}")
    print(f"total {doc['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
