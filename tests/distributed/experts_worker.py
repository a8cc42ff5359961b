"""Run on each rank by test_experts.py: every folder given loaded with --parallel experts, then `run` on it.

`run` is also what the test computes on the single-process model, so both sides do exactly the same steps."""

import sys

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

PROMPT = [1, 5, 9, 2, 7, 3, 11, 4, 8, 6, 10, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]  # 24 > 16: eager
PREFIX = 16  # the cached decode: a 16-token step (compiled), then DECODE single tokens (compiled)
DECODE = 6
GREEDY = 32


def run(model) -> tuple:
    """-> (json-able results, arrays): prefill logits, cached decode logits, 32 greedy tokens (and 32 from
    speculative MTP decoding when the model has MTP modules), and the parameter bytes of the routed experts."""
    from mlxmodels.generate import generate_step
    from mlxmodels.speculative import MTPDrafter, Sampling, speculative_generate_step

    ids = mx.array([PROMPT])
    prefill = model(ids)[0]  # (T, V)
    cache = model.make_cache()
    steps = [model(ids[:, :PREFIX], cache)[0, -1]]
    steps += [model(ids[:, t : t + 1], cache)[0, -1] for t in range(PREFIX, PREFIX + DECODE)]
    greedy = [t for t, _ in generate_step(model, PROMPT, model.make_cache(), max_tokens=GREEDY)]
    result = {"greedy": greedy, "expert_bytes": expert_bytes(model), "bytes": nbytes(model.parameters())}
    if model.mtp_modules:
        spec = speculative_generate_step(model, PROMPT, model.make_cache(rollback=3), MTPDrafter(model), 3,
                                         Sampling(), max_tokens=GREEDY)
        result["speculative"] = [t for t, _ in spec]
    return result, {"prefill": prefill, "decode": mx.stack(steps)}


def expert_bytes(model) -> int:
    """Bytes of the routed experts (the stacked switch_mlp / experts tensors of every MoE layer, MTP included)."""
    names = {layer.ffn.experts_name for layer in model.spec.layers + model.spec.mtp if hasattr(layer.ffn, "n_experts")}
    return sum(a.nbytes for n, a in tree_flatten(model.parameters()) if any(f".{e}." in n for e in names))


def nbytes(params) -> int:
    return sum(a.nbytes for _, a in tree_flatten(params))


def main(folders):
    from mlxmodels.distributed.load import load_parallel
    from tests.distributed.harness import write_result

    group = mx.distributed.init()
    results, arrays = {}, {}
    for i, folder in enumerate(folders):
        model = load_parallel(folder, "experts", group=group)
        results[folder], out = run(model)
        arrays.update({f"{i}.{k}": np.array(v) for k, v in out.items()})
    write_result(results, arrays)


if __name__ == "__main__":
    main(sys.argv[1:])
