"""One rank of test_tensor.py: each folder given as NAME=FOLDER loaded with parallel="tensor", then the same checks
`observe` runs on the single-process model in the test. Writes {NAME: tokens and bytes} and NAME's logits."""

import sys

import mlx.core as mx
from mlx.utils import tree_flatten

import mlxmodels

PROMPT = [5, 17, 99, 3, 250, 8, 41, 2, 77, 13, 64, 1]
PREFILL = 8  # cached decode: these tokens at once, then the rest one at a time
GREEDY = 32


def observe(model, mtp: bool = False) -> tuple:
    """-> ({tokens, speculative tokens, parameter bytes}, {logits of a prefill, a cached and a paged decode})."""
    ids = mx.array([PROMPT])
    found = {"tokens": greedy(model), "bytes": sum(v.nbytes for _, v in tree_flatten(model.parameters()))}
    if mtp:
        found["speculative"] = greedy(model, draft="mtp", num_draft=2)
    return found, {"prefill": model(ids), "decode": decode(model, ids, model.make_cache()),
                   "paged": decode(model, ids, model.make_cache(paged=True))}


def decode(model, ids, cache):
    """PREFILL tokens at once, then the rest one at a time -> (1, T, V) logits."""
    steps = [model(ids[:, :PREFILL], cache)] + [model(ids[:, t : t + 1], cache) for t in range(PREFILL, ids.shape[1])]
    return mx.concatenate(steps, axis=1)


def greedy(model, **options) -> list:
    return [r.token for r in mlxmodels.stream_generate(model, None, PROMPT, max_tokens=GREEDY, **options)]


def main(args):
    from tests.distributed.harness import write_result

    mx.distributed.init()
    results, arrays = {}, {}
    for arg in args:
        name, folder = arg.split("=")
        model, _ = mlxmodels.load(folder, parallel="tensor")
        found, logits = observe(model, mtp=bool(model.mtp_modules))
        results[name] = found
        arrays.update({f"{name}.{k}": v for k, v in logits.items()})
    write_result(results, arrays)


if __name__ == "__main__":
    main(sys.argv[1:])
