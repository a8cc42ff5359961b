"""One rank of test_traffic.py: each MODE=FOLDER loaded with parallel=MODE under traffic.counted(), then the bytes
this rank's collectives sent in an eager prefill and in eager decode steps, per token."""

import sys

import mlx.core as mx

import mlxmodels
from mlxmodels.distributed.traffic import counted
from mlxmodels.parts import compiled

PROMPT = [5, 17, 99, 3, 250, 8, 41, 2]
STEPS = 3


def sent(model, count) -> dict:
    """-> bytes per token of a prefill of PROMPT and of STEPS decode steps after it."""
    cache = model.make_cache()
    count.reset()
    y = mx.argmax(model(mx.array([PROMPT]), cache=cache)[:, -1:], axis=-1)
    mx.eval(y)
    prefill = count.total / len(PROMPT)
    count.reset()
    for _ in range(STEPS):
        y = mx.argmax(model(y, cache=cache)[:, -1:], axis=-1)
        mx.eval(y)
    return {"prefill": prefill, "decode": count.total / STEPS, "calls": {k: v / STEPS for k, v in count.calls.items()}}


def main(args):
    from tests.distributed.harness import write_result

    mx.distributed.init()
    compiled.ENABLED = False  # a compiled step replays its trace without Python: its collectives would go uncounted
    results = {}
    for arg in args:
        key, folder = arg.split("=")
        with counted() as count:  # before load: the Layout hands its modules the (counting) collectives it builds
            model, _ = mlxmodels.load(folder, parallel=key.split("/")[1])
            results[key] = sent(model, count)
    write_result(results)


if __name__ == "__main__":
    main(sys.argv[1:])
