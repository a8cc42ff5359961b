"""`parallel="auto"`: the mode to split a model in, from its spec, the group size and what each rank may hold.

Preference, first that applies: experts for an MoE model whose experts divide over the ranks (the experts are most
of its bytes and each token visits few of them, so little crosses the link); tensor when the attention heads
divide and equal shares fit every rank (one all_sum per sublayer, every rank busy on every token); else pipeline,
which only needs one layer per rank and sizes its ranges by memory. A mode whose Layout still refuses the model
(ParallelError: a quantization group that does not divide, qk-norm over the whole projection) falls through to
the next.
"""

import sys
from typing import Callable, Optional

from ..spec import MoESpec
from .layout import Layout, ParallelError
from .memory import fits, human_bytes


def candidates(spec, size: int, budgets: Optional[list], total: int) -> list:
    """-> [(mode, why)] in the order to try them; pipeline always last."""
    out = []
    fit = fits(total, budgets, size)
    room = (f"the model's {human_bytes(total)} fits {size} x {human_bytes(min(budgets))}" if budgets else
            "memory unknown")
    experts = sorted({layer.ffn.n_experts for layer in spec.layers if isinstance(layer.ffn, MoESpec)})
    if experts and fit and all(e % size == 0 for e in experts):
        out.append(("experts", f"{'/'.join(map(str, experts))} experts per MoE layer over {size} ranks; {room}"))
    heads = sorted({layer.attn.n_heads for layer in spec.layers})
    if fit and all(h % size == 0 for h in heads):
        out.append(("tensor", f"{'/'.join(map(str, heads))} attention heads over {size} ranks; {room}"))
    out.append(("pipeline", f"{spec.num_layers} layers in ranges sized by each rank's memory"
                + ("" if fit else f" (equal shares of {human_bytes(total)} do not fit every rank)")))
    return out


def choose(spec, group, budgets: Optional[list], total: int, rooms: Optional[list] = None, modes=None,
           say: Optional[Callable[[str], None]] = None) -> Layout:
    """The first candidate whose Layout accepts the model; rank 0 says which on stderr. `budgets` go to the
    Layout (None: equal shares), `rooms` (default: budgets) is what each rank may hold, `total` the model's bytes."""
    from . import MODES

    modes = MODES if modes is None else modes
    tried = candidates(spec, group.size(), budgets if rooms is None else rooms, total)
    for i, (mode, why) in enumerate(tried):
        try:
            layout = modes[mode](spec, group, budgets)
        except ParallelError as e:
            if i == len(tried) - 1:
                raise
            why = f"{tried[i + 1][1]}; {mode} does not apply: {e}"
            tried[i + 1] = (tried[i + 1][0], why)
            continue
        if group.rank() == 0:
            (say or _stderr)(f"mlxm: --parallel auto chose {mode} ({why})")
        return layout


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
