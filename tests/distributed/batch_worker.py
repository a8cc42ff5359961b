"""Run on each rank by test_serve.py: the folder given loaded with --parallel MODE, then several prompts generated
together by BatchGenerator on the paged cache (rows joining at different steps), the tokens rank 0's on every rank
(follow_engine.share). `run` is also what the test computes on the single-process model."""

import sys
from functools import partial

import mlx.core as mx

PROMPTS = [[5, 17, 33, 2, 41], [60, 61, 62, 63] * 5, [9, 8, 7], [40, 50, 60, 70, 80, 90]]
OPTIONS = dict(num_blocks=32, block_size=8, max_batch=3, prefill_budget=8)  # 3 rows; newcomers wait their turn


def run(model, share=None) -> list:
    from mlxmodels.batch import generate_batch

    return generate_batch(model, PROMPTS, max_tokens=20, share=share, **OPTIONS)


def main(folder, mode):
    from mlxmodels.distributed.follow_engine import share
    from mlxmodels.distributed.load import load_parallel
    from tests.distributed.harness import write_result

    group = mx.distributed.init()
    write_result({"tokens": run(load_parallel(folder, mode, group=group), partial(share, group))})


if __name__ == "__main__":
    main(*sys.argv[1:])
