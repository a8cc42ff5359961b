#!/usr/bin/env python
"""What quantized KV costs in accuracy on a real model and a real text: perplexity and KL against float KV, ours and
mlx-lm's QuantizedKVCache on the same folder.

    python scripts/bench_kv_text.py FOLDER [--text FILE] [--tokens 2048] [--chunk 256] [--json FILE]

FOLDER: an MLX folder (e.g. `mlxm convert SmolLM2-135M-Instruct.Q4_1.gguf OUT`, tests/gguf_fixture.py's file).
The text (default: the GPL version 3, /usr/share/common-licenses/GPL-3) is tokenized and its first --tokens tokens
are fed in --chunk-token steps through one cache, so every position after the first chunk attends to cached rows
(each stored quantized before it is read, in both tools); every position's next-token log-probabilities are kept.
Reported per tool and KV (float, 8-bit, 4-bit; group size 64): perplexity of the text, and over the positions past
the first chunk the mean and max of KL(float KV || quantized KV), each tool against its own float run, and the max
|difference| of the log-probabilities.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlxmodels  # noqa: E402  (first: it loads a fast BLAS on Linux, which must come before mlx.core)
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

GROUP = 64


def ours(folder: str):
    model, tokenizer = mlxmodels.load(folder, dtype="float32")

    def make_cache(bits):
        return model.make_cache(kv_bits=bits, kv_group_size=GROUP) if bits else model.make_cache()

    return model, tokenizer, make_cache


def mlx_lm(folder: str):
    from mlx_lm.models.cache import KVCache, QuantizedKVCache
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(folder))
    model.set_dtype(mx.float32)
    model.eval()

    def make_cache(bits):  # what mlx-lm's generate_step ends with for --kv-bits (quantized_kv_start 0)
        return [QuantizedKVCache(group_size=GROUP, bits=bits) if bits else KVCache() for _ in model.layers]

    return model, None, make_cache


def log_probs(model, cache, ids: np.ndarray, chunk: int) -> np.ndarray:
    """(T, V) next-token log-probabilities of every position, fed `chunk` tokens at a time through `cache`."""
    out = []
    for start in range(0, len(ids), chunk):
        logits = model(mx.array(ids[None, start:start + chunk]), cache=cache)[0].astype(mx.float32)  # (t, V)
        out.append(np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True)))
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--tools", default="ours,mlx-lm")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    _, tokenizer, _ = ours(args.folder)
    ids = np.array(tokenizer.encode(Path(args.text).read_text())[:args.tokens])
    print(f"# {platform.machine()} {platform.system()}, MLX {mx.__version__}, device {mx.default_device()}; "
          f"{len(ids)} tokens of {args.text}, chunks of {args.chunk}")
    print("tool     kv     perplexity  mean KL   max KL    max|dlogprob|")
    rows = []
    for tool in args.tools.split(","):
        model, _, make_cache = (ours if tool == "ours" else mlx_lm)(args.folder)
        base = None
        for bits in (None, 8, 4):
            lp = log_probs(model, make_cache(bits), ids, args.chunk)
            nll = -lp[np.arange(len(ids) - 1), ids[1:]]
            row = dict(tool=tool, kv=bits or "float", tokens=len(ids), perplexity=float(np.exp(nll.mean())))
            if base is None:
                base = lp
            kl = (np.exp(base) * (base - lp)).sum(-1)[args.chunk:]  # positions that attend to cached rows
            row.update(mean_kl=float(kl.mean()), max_kl=float(kl.max()),
                       max_dlogprob=float(np.abs(base - lp)[args.chunk:].max()))
            rows.append(row)
            print(f"{tool:8} {str(row['kv']):5}  {row['perplexity']:10.3f}  {row['mean_kl']:.1e}  "
                  f"{row['max_kl']:.1e}  {row['max_dlogprob']:.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
