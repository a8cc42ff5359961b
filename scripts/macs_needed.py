#!/usr/bin/env python
"""What fits on how many Macs, and how fast it would decode: on paper, from `mlxm info`'s numbers.

    python scripts/macs_needed.py [--context 32768] [--json FILE]

For each model (real config.json files under tests/data/configs; Qwen3-235B-A22B, which has none there, is
Qwen3-30B-A3B's file with the 235B's sizes from its model card), app/info.describe reads the config with its FP8
quantization replaced by mlx-lm's 4-bit affine (group 64, bfloat16 scales and biases: 0.5625 bytes per weight)
and the context set to `--context`: weights, MTP included, + the bfloat16 KV cache of one sequence filled to the
context. The memory a Mac gives the GPU is macOS's default wired limit (3/4 of RAM on these sizes) or, raised with
`sudo sysctl iogpu.wired_limit_mb=...`, RAM less 12 GiB for the OS. A pipeline stage holds whole layers (embedding
with the first, norm, head and MTP with the last), so the count below is the fewest equal Macs whose stages fit.

Decode speed (batch 1) is bounded by bandwidth: every token reads the active weights and the KV cache once.
pipeline runs the stages one after another (one Mac's bandwidth) plus one hop per cut and two all_sums (the last
hidden state and the logits reach every rank);
tensor/experts read 1/N each in parallel, plus 2 all_sums per layer (traffic.computed) each costing 2 (N-1) ring
steps of link latency + bytes / link rate. The latencies and rates are the LINKS table: published figures, cited
in docs/DISTRIBUTED.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app import info  # noqa: E402
from app.sizes import human_bytes  # noqa: E402
from mlxmodels.distributed.traffic import MODES, computed  # noqa: E402

CONFIGS = ROOT / "tests" / "data" / "configs"
GIB = 2 ** 30
BYTES_PER_WEIGHT = 4 / 8 + 2 * 2 / 64  # 4-bit codes + a bfloat16 scale and bias per group of 64
OS_RESERVE = 12 * GIB

# model -> (config folder, overrides): Qwen3-235B-A22B's sizes as its model card gives them
MODELS = {
    "DeepSeek-V3": ("DeepSeek-V3", {}),
    "Kimi K2": ("Kimi-K2-Instruct", {}),
    "Qwen3-235B-A22B": ("Qwen3-30B-A3B", dict(hidden_size=4096, num_hidden_layers=94, num_attention_heads=64,
                                              num_key_value_heads=4, intermediate_size=12288,
                                              moe_intermediate_size=1536, max_window_layers=94)),
    "Llama-4-Maverick": ("Llama-4-Maverick-17B-128E-Instruct", {}),
}

# Mac memory size (GiB) -> (the Mac that has it, memory bandwidth GB/s), from Apple's technical specifications
MACS = {
    64: ("Mac mini M4 Pro", 273),
    128: ("Mac Studio M4 Max", 546),
    192: ("Mac Studio M2 Ultra", 800),
    256: ("Mac Studio M3 Ultra", 819),
    512: ("Mac Studio M3 Ultra", 819),
}

# link -> (latency of one message in seconds, rate in bytes/s)
LINKS = {
    "10GbE (ring, TCP)": (300e-6, 10e9 / 8),
    "Thunderbolt 4 (ring, TCP)": (300e-6, 40e9 / 8),
    "Thunderbolt 5 (ring, TCP)": (300e-6, 80e9 / 8),
    "Thunderbolt 5 (JACCL, RDMA)": (5e-6, 80e9 / 8),
}


def config_folder(name: str, context: int, tmp: Path) -> Path:
    folder_name, overrides = MODELS[name]
    cfg = json.loads((CONFIGS / folder_name / "config.json").read_text())
    cfg.pop("quantization_config", None)
    cfg["quantization"] = {"group_size": 64, "bits": 4}
    text = cfg.get("text_config", cfg)  # Llama 4 keeps its text model's keys apart
    text.update(overrides)
    text["max_position_embeddings"] = context
    folder = tmp / folder_name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def stage_bytes(folder: Path, context: int) -> list:
    """-> (bytes of each pipeline unit in order: embedding, each layer with its KV at `context`, then the rest;
    the spec)."""
    from mlx.utils import tree_flatten

    from mlxmodels.config import read_config
    from mlxmodels.decoder import Decoder
    from mlxmodels.families import build_spec

    _, spec = build_spec(read_config(folder), str(folder / "config.json"))
    model = Decoder(spec)  # lazy: nothing is allocated

    def size(module) -> float:
        return sum(p.size for _, p in tree_flatten(module.parameters())) * BYTES_PER_WEIGHT

    layers = [size(block) + info._kv_bytes(layer.attn, 2) * min(context, info._bound(layer.attn) or context)
              for layer, block in zip(spec.layers, model.model.layers[: len(spec.layers)])]
    whole = size(model)
    embed = size(model.model.embed_tokens)
    rest = whole - embed - sum(size(b) for b in model.model.layers[: len(spec.layers)])
    return [embed] + layers + [rest], spec


def fewest_stages(units: list, capacity: float) -> int:
    """The fewest contiguous stages of `units` each within `capacity` (greedy is optimal for contiguous cuts)."""
    if max(units) > capacity:
        return math.inf
    stages, held = 1, 0.0
    for b in units:
        if held + b > capacity:
            stages, held = stages + 1, 0.0
        held += b
    return stages


def usable(gib: int, raised: bool) -> float:
    return gib * GIB - OS_RESERVE if raised else 0.75 * gib * GIB


def decode_tok_s(active: float, kv: float, macs: int, bandwidth: float, mode: str, link, spec_dims) -> float:
    """Tokens/s of one sequence: bytes read per token over bandwidth, plus what the link adds per token."""
    from mlxmodels.distributed.traffic import ring_bytes

    hidden, vocab, layers = spec_dims
    latency, rate = link
    read = (active + kv) * 1e-9 / bandwidth  # seconds: GB over GB/s
    if macs == 1:
        return 1 / read
    def all_sum(nbytes: float) -> float:  # 2 (N-1) ring steps
        return 2 * (macs - 1) * latency + ring_bytes("all_sum", nbytes, macs) / rate

    if mode == "pipeline":  # a hop per cut, then the last hidden state and the logits shared (pipeline.py)
        return 1 / (read + (macs - 1) * (latency + hidden * 2 / rate) + all_sum(hidden * 2) + all_sum(vocab * 2))
    gather = (macs - 1) * latency + ring_bytes("all_gather", vocab * 2 / macs, macs) / rate
    return 1 / (read / macs + (2 * layers + 1) * all_sum(hidden * 2) + gather)


def plan(name: str, context: int, tmp: Path) -> dict:
    folder = config_folder(name, context, tmp)
    r = info.describe(str(folder), "bfloat16")
    units, spec = stage_bytes(folder, context)
    total = r["load_bytes"] + r["kv_bytes_full_context"]
    active = r["params_active"] * BYTES_PER_WEIGHT
    dims = (r["hidden_size"], r["vocab_size"], r["layers"])
    fits = {gib: {"default": fewest_stages(units, usable(gib, False)),
                  "raised": fewest_stages(units, usable(gib, True))} for gib in MACS}
    speeds = {}
    for gib, (mac, bandwidth) in MACS.items():
        n = fits[gib]["raised"]
        if n == math.inf or n > 16:
            continue
        speeds[gib] = {"macs": n, "mac": mac, "bandwidth_gb_s": bandwidth,
                       "pipeline": decode_tok_s(active, r["kv_bytes_full_context"], n, bandwidth, "pipeline",
                                                LINKS["Thunderbolt 5 (ring, TCP)"], dims),
                       **{f"tensor over {link}": decode_tok_s(active, r["kv_bytes_full_context"], n, bandwidth,
                                                              "tensor", LINKS[link], dims) for link in LINKS}}
    traffic = {n: {mode: computed(spec, mode, n).total for mode in MODES} for n in (2, 4, 8)}
    return {"model": name, "params_total": r["params_total"], "traffic": traffic, "layer_count": r["layers"],
            "params_active": r["params_active"], "params_mtp": r["params_mtp"], "weights_bytes": r["load_bytes"],
            "kv_bytes": r["kv_bytes_full_context"],
            "total_bytes": total, "active_bytes": active, "largest_layer_bytes": max(units[1:-1]),
            "fits": fits, "speeds": speeds}


def table(plans: list, context: int) -> str:
    head = " | ".join(f"{g} GB" for g in MACS)
    lines = [f"| model | weights (4-bit) | KV at {context // 1024}k | total | {head} |",
             "|---|---:|---:|---:|" + "---:|" * len(MACS)]
    for p in plans:
        counts = " | ".join(_count(p["fits"][g]) for g in MACS)
        lines.append(f"| {p['model']} | {human_bytes(p['weights_bytes'])} | {human_bytes(p['kv_bytes'])} | "
                     f"{human_bytes(p['total_bytes'])} | {counts} |")
    lines += ["", "| model | Macs | pipeline tok/s | " + " | ".join(f"tensor, {k}" for k in LINKS) + " |",
              "|---|---|---:|" + "---:|" * len(LINKS)]
    for p in plans:
        for gib, s in p["speeds"].items():
            cells = " | ".join(f"{s[f'tensor over {k}']:.1f}" for k in LINKS)
            lines.append(f"| {p['model']} | {s['macs']} x {s['mac']} {gib} GB ({s['bandwidth_gb_s']} GB/s) | "
                         f"{s['pipeline']:.1f} | {cells} |")
    lines += ["", "| model | Macs | " + " | ".join(f"{m} KB per token (per layer)" for m in MODES) + " |",
              "|---|---:|" + "---:|" * len(MODES)]
    for p in plans:
        for n, by_mode in p["traffic"].items():
            cells = " | ".join(f"{b / 1e3:.0f} ({b / p['layer_count'] / 1e3:.1f})" for b in by_mode.values())
            lines.append(f"| {p['model']} | {n} | {cells} |")
    return "\n".join(lines)


def _count(fit: dict) -> str:
    d, r = fit["default"], fit["raised"]
    show = lambda n: "-" if n == math.inf else str(n)  # noqa: E731
    return show(r) if d == r else f"{show(r)} ({show(d)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plans = [plan(name, args.context, Path(tmp)) for name in MODELS]
    print(table(plans, args.context))
    if args.json:
        Path(args.json).write_text(json.dumps(plans, indent=1, default=str))


if __name__ == "__main__":
    main()
