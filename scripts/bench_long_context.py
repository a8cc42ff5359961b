#!/usr/bin/env python
"""Bounded caches and prompt-cache files: what they save, on scripts/bench_paged.py's random Llama-shaped model.

    python scripts/bench_long_context.py [--doc 1024,4096] [--question 32] [--max-kv-size 1024] [--decode 32]
                                         [--small] [--json FILE]

Prompt-cache files: per --doc length, the time to the first token of a --question-token prompt after the document,
fed whole (document + question) or resumed from a prompt-cache file (load_prompt_cache, then the question only;
the load is timed with it), and the file's size and save time. Both must give the same first token.
Bounded caches: per --doc length, the KV bytes held and the decode speed (--decode greedy tokens, after a
prefill of that length) with a full cache and with max_kv_size; past the bound the bounded one stays flat.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import mlx.core as mx  # noqa: E402

import mlxmodels  # noqa: E402
from bench_paged import llama, timed_generation  # noqa: E402
from mlxmodels.generate import prefill  # noqa: E402


def first_token(model, tokens, cache) -> int:
    y = mx.argmax(prefill(model, tokens, cache), axis=-1)
    return int(y.item())


def resume(model, doc, question, folder: Path) -> dict:
    cache = model.make_cache()
    start = time.perf_counter()
    want = first_token(model, doc + question, cache)
    whole = time.perf_counter() - start
    cache = model.make_cache()
    first_token(model, doc, cache)
    path = folder / "doc.cache"
    start = time.perf_counter()
    mlxmodels.save_prompt_cache(path, cache, model=model, tokens=doc)
    saved = time.perf_counter() - start
    start = time.perf_counter()
    loaded, _ = mlxmodels.load_prompt_cache(path, model)
    got = first_token(model, question, loaded)
    resumed = time.perf_counter() - start
    assert got == want, "the resumed run must give the whole prompt's first token"
    return {"doc": len(doc), "ttft_whole_s": whole, "ttft_resumed_s": resumed, "speedup": whole / resumed,
            "file_mb": path.stat().st_size / 2 ** 20, "save_s": saved}


def bounded(model, doc, n: int, max_kv_size: int) -> dict:
    row = {"doc": len(doc)}
    for name, options in (("full", {}), ("bounded", {"max_kv_size": max_kv_size})):
        cache = model.make_cache(**options)
        tps, _, _ = timed_generation(model, doc, n, cache)
        row[f"{name}_kv_mb"] = sum(c.nbytes for c in cache) / 2 ** 20
        row[f"{name}_decode_tps"] = tps
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--doc", default="1024,4096", help="document lengths in tokens, comma-separated")
    p.add_argument("--question", type=int, default=32)
    p.add_argument("--max-kv-size", type=int, default=1024)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--small", action="store_true", help="a quarter of the model")
    p.add_argument("--json", default=None, metavar="FILE")
    args = p.parse_args()
    model = llama(args.small)
    vocab = model.spec.vocab_size
    report = {"device": str(mx.default_device()), "small": args.small, "resume": [], "bounded": []}
    first_token(model, list(range(64)), model.make_cache())  # warm-up: the first pass pays for setting MLX up
    with tempfile.TemporaryDirectory() as folder:
        for n in map(int, args.doc.split(",")):
            doc = mx.random.randint(0, vocab, (n,), key=mx.random.key(1)).tolist()
            question = mx.random.randint(0, vocab, (args.question,), key=mx.random.key(2)).tolist()
            report["resume"].append(resume(model, doc, question, Path(folder)))
            report["bounded"].append(bounded(model, doc, args.decode, args.max_kv_size))
            print(json.dumps(report["resume"][-1]), json.dumps(report["bounded"][-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
