#!/usr/bin/env python
"""Experts mode's two ways of running a rank's (token, expert) pairs (mlxmodels/distributed/experts.py), timed on
one rank's half of a random MoE layer in one process, beside the whole layer a single process runs.

    python scripts/bench_experts_split.py [--tokens 1,16,512] [--experts 32] [--top-k 4] [--repeats 5]

mask: every pair runs, other ranks' pairs pointed at a local expert and dropped (compiled decode steps);
regroup: only this rank's pairs run, after one wait for their count (eager prefill chunks). float32.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlxmodels  # noqa: E402,F401  (first: it loads a fast BLAS on Linux, which must come before mlx.core)
import mlx.core as mx  # noqa: E402
from mlxmodels.distributed.experts import LocalExperts  # noqa: E402
from mlxmodels.parts.experts import SwitchMLP  # noqa: E402


def seconds(fn, repeats: int) -> float:
    mx.eval(fn())  # warm up
    start = time.perf_counter()
    for _ in range(repeats):
        mx.eval(fn())
    return (time.perf_counter() - start) / repeats


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", default="1,16,512")
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    E, k, D = a.experts, a.top_k, a.hidden
    mx.random.seed(0)
    whole = SwitchMLP(D, a.intermediate, E)
    half = LocalExperts(D, a.intermediate, E // 2, "silu", 0)  # rank 0 of 2
    mx.eval(whole.parameters(), half.parameters())
    print(f"E={E} k={k} D={D} intermediate={a.intermediate}; ms per call (one rank's {E // 2} experts vs all {E})")
    print(f"{'tokens':>6} {'whole':>9} {'mask':>9} {'regroup':>9}")
    for n in map(int, a.tokens.split(",")):
        x, idx = mx.random.normal((n, D)), mx.random.randint(0, E, (n, k))
        row = [seconds(lambda: whole(x, idx), a.repeats)]
        for regroup in (False, True):
            half.regroup = regroup
            row.append(seconds(lambda: half(x, idx), a.repeats))
        print(f"{n:>6} " + " ".join(f"{t * 1e3:>9.2f}" for t in row))


if __name__ == "__main__":
    main()
