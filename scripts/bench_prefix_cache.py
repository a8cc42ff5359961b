#!/usr/bin/env python
"""Prefix cache benchmark: time to first token of a request sharing a long system prompt with an earlier one.

    python scripts/bench_prefix_cache.py [--system 1000] [--user 50] [--trials 5] [--block-size 16] [--small]
                                         [--json FILE]

Per trial, one paged cache (prefix_cache on or off; trials alternate on/off in ABBA order): a first request of
--system shared tokens then --user tokens of its own is prefilled and its blocks committed (`commit_tokens`),
then freed, as a finished request is; then a second request with the same system prompt and other user tokens
claims what the pool holds (`claim_prefix`) and prefills the rest. Its time to first token runs from the claim
to its first greedy token evaluated. The model is scripts/bench_paged.py's random Llama-shaped one in float32
(--small: a quarter of it). Medians are reported with the on/off ratio; on and off must give the same token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from bench_paged import llama  # noqa: E402
from mlxmodels.generate import prefill  # noqa: E402


def first_token(model, cache, prompt) -> tuple:
    """-> (seconds from the claim to the first token, the token, prompt tokens reused)."""
    pool = cache.pool
    sid = pool.add_sequence()
    pool.active = [sid]
    start = time.perf_counter()
    reused = pool.claim_prefix(sid, prompt)
    token = mx.argmax(prefill(model, prompt[reused:], cache), axis=-1)
    mx.eval(token)
    seconds = time.perf_counter() - start
    pool.commit_tokens(sid, prompt[reused:])
    pool.free(sid)
    return seconds, int(token.item()), reused


def trial(model, args, on: bool, rng) -> dict:
    blocks = -(-(args.system + args.user + 1) // args.block_size) * 2
    cache = model.make_cache(paged=True, num_blocks=blocks, block_size=args.block_size, prefix_cache=on)
    cache.pool.free(cache.pool.active[0])
    system = rng.integers(0, model.spec.vocab_size, args.system).tolist()
    first, second = (system + rng.integers(0, model.spec.vocab_size, args.user).tolist() for _ in range(2))
    first_token(model, cache, first)
    seconds, token, reused = first_token(model, cache, second)
    return dict(ttft_ms=seconds * 1e3, token=token, reused=reused)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", type=int, default=1000, help="shared system prompt tokens")
    p.add_argument("--user", type=int, default=50, help="tokens of each request's own")
    p.add_argument("--trials", type=int, default=5, help="trials per setting")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--small", action="store_true", help="a quarter-size model")
    p.add_argument("--json", metavar="FILE", help="write every trial and the medians here")
    args = p.parse_args()
    model = llama(args.small)
    trial(model, args, True, np.random.default_rng(99))  # warm-up: first-call costs land in no trial
    runs = {True: [], False: []}
    for i in range(args.trials):
        for on in ((True, False) if i % 2 == 0 else (False, True)):
            runs[on].append(trial(model, args, on, np.random.default_rng(i)))  # same prompts for on and off
    for i, (a, b) in enumerate(zip(runs[True], runs[False])):
        if a["token"] != b["token"]:
            sys.exit(f"trial {i}: the first token differs with the prefix cache on ({a['token']}) and off "
                     f"({b['token']})")
    med = {on: statistics.median(r["ttft_ms"] for r in runs[on]) for on in runs}
    result = dict(system=args.system, user=args.user, block_size=args.block_size, small=args.small,
                  ttft_ms_on=med[True], ttft_ms_off=med[False], speedup=med[False] / med[True],
                  reused_on=runs[True][0]["reused"], trials_on=runs[True], trials_off=runs[False])
    print(f"time to first token, {args.system} shared + {args.user} own prompt tokens "
          f"({result['reused_on']} reused with the cache on): on {med[True]:.1f} ms, off {med[False]:.1f} ms, "
          f"{result['speedup']:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
