"""Run on each rank by test_pipeline.py: every folder given loaded with --parallel pipeline, then `run` on it; and
one folder loaded again with uneven budgets, to report the layer ranges they give.

`run` is also what the test computes on the single-process model, so both sides do exactly the same steps."""

import json
import sys

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

PROMPT = [1, 5, 9, 2, 7, 3, 11, 4, 8, 6, 10, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]  # 24 > 16: eager
PREFIX = 16  # the cached decode: a 16-token step (compiled), then DECODE single tokens, past gemma3's window of 8
DECODE = 6
GREEDY = 32
CHUNK = 5  # a prompt fed in chunks evaluated through the caches only, as long prompts are


def run(model) -> tuple:
    """-> (json-able results, arrays): prefill logits, cached decode logits (contiguous and paged caches), 32 greedy
    tokens with a chunked prefill (and 32 from speculative MTP decoding when the model has MTP modules), parameter bytes."""
    from mlxmodels.generate import generate_step
    from mlxmodels.speculative import MTPDrafter, Sampling, speculative_generate_step

    ids = mx.array([PROMPT])
    prefill = model(ids)[0]  # (T, V)
    greedy = [t for t, _ in generate_step(model, PROMPT, model.make_cache(), max_tokens=GREEDY,
                                          prefill_step_size=CHUNK)]
    result = {"greedy": greedy, "bytes": sum(a.nbytes for _, a in tree_flatten(model.parameters()))}
    if model.mtp_modules:
        spec = speculative_generate_step(model, PROMPT, model.make_cache(rollback=3), MTPDrafter(model), 3,
                                         Sampling(), max_tokens=GREEDY)
        result["speculative"] = [t for t, _ in spec]
    return result, {"prefill": prefill, "decode": decode(model, ids, model.make_cache()),
                    "paged": decode(model, ids, model.make_cache(paged=True))}


def decode(model, ids, cache):
    """PREFIX tokens in one step, then DECODE single tokens -> the last logits of each step (1 + DECODE, V)."""
    steps = [model(ids[:, :PREFIX], cache)[0, -1]]
    steps += [model(ids[:, t : t + 1], cache)[0, -1] for t in range(PREFIX, PREFIX + DECODE)]
    return mx.stack(steps)


def main(folders, uneven_folder, budgets):
    from mlxmodels.distributed.load import load_parallel
    from tests.distributed.harness import write_result

    group = mx.distributed.init()
    results, arrays = {}, {}
    for i, folder in enumerate(folders):
        model = load_parallel(folder, "pipeline", group=group)
        results[folder], out = run(model)
        results[folder]["layers"] = model.spec.num_layers
        arrays.update({f"{i}.{k}": np.array(v) for k, v in out.items()})
    model = load_parallel(uneven_folder, "pipeline", group=group, budgets=budgets)
    results["uneven"] = {"layers": model.spec.num_layers, "greedy": run(model)[0]["greedy"]}
    # generate_step leaves one step queued (async_eval); a rank that exits before it ran closes its peers' sockets
    mx.eval(mx.distributed.all_sum(mx.zeros(1), group=group))
    write_result(results, arrays)


if __name__ == "__main__":
    main(sys.argv[1].split(","), sys.argv[2], json.loads(sys.argv[3]))
