"""Bytes the ranks send per token in each parallel mode: computed from the spec, and counted at MLX's collectives.

The computed figure is what a mode must move for one token (batch 1, one decode step), all ranks together, on a
ring of N ranks (MLX's ring backend; an all_sum of s bytes sends 2 (N-1)/N s from each rank: reduce-scatter then
all-gather; an all_gather of s bytes per rank forwards (N-1) s from each rank):

- tensor, experts: one all_sum of the hidden state (D values) after attention and one after the FFN (dense, or the
  routed + shared experts) in every layer; one all_sum for the embedding split over the vocabulary; the head's
  vocabulary slices all-gathered to (V) on every rank.
- pipeline: the hidden state (D) sent across each of the N - 1 cuts; then the last stage's final hidden state (D)
  and the head's logits (V) are shared with every rank by all_sums to which the other ranks add zeros (pipeline.py).
  A one-to-all broadcast would send (N - 1) (D + V) instead of the all_sums' 2 (N - 1) (D + V); mx.distributed
  has no broadcast, so it would take a send per other rank. Per token the head's V dominates either way.

Counting wraps the functions of `mx.distributed` (`counted()`), so whatever a Layout's modules call is seen
without a branch in any part: the wrapper adds the same ring bytes for each call's array, then calls MLX's own.
Install it before the model is loaded, since a module may keep a reference to the function it was given, and
count eager steps (parts/compiled.py's ENABLED = False, or MLXMODELS_COMPILE=0): a compiled few-token step
replays its trace without calling Python, so a collective inside it is counted once per trace, not per step.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Dict, Iterator

import mlx.core as mx

from ..spec import ModelSpec

MODES = ("pipeline", "tensor", "experts")


def ring_bytes(op: str, nbytes: int, ranks: int) -> float:
    """Bytes one rank sends for one call of `op` on an array of `nbytes` (its own input) over a ring of `ranks`."""
    n = ranks
    if op in ("all_sum", "all_max", "all_min"):
        return 2 * (n - 1) * nbytes / n
    if op == "all_gather":
        return (n - 1) * nbytes
    if op == "sum_scatter":
        return (n - 1) * nbytes / n
    if op == "send":
        return nbytes
    raise ValueError(f"no ring cost for {op!r}")


@dataclass(frozen=True)
class Traffic:
    """Bytes all ranks together send for one token. per_layer: what each layer's sublayers add (tensor, experts);
    cuts: the hidden state across stage boundaries (pipeline); ends: embedding and head, and in pipeline mode the
    final hidden state shared (the full logits on every rank)."""

    mode: str
    ranks: int
    layers: int
    per_layer: float
    cuts: float
    ends: float

    @property
    def total(self) -> float:
        return self.per_layer * self.layers + self.cuts + self.ends

    @property
    def per_layer_average(self) -> float:
        """The total spread over the layers: comparable across modes."""
        return self.total / self.layers


def computed(spec: ModelSpec, mode: str, ranks: int, itemsize: int = 2) -> Traffic:
    """What `mode` must send per token for `spec` on `ranks` ranks with activations of `itemsize` bytes."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
    n, hidden, vocab = ranks, spec.hidden_size * itemsize, spec.vocab_size * itemsize
    layers = len(spec.layers)
    if n == 1:
        return Traffic(mode, 1, layers, 0, 0, 0)
    all_sum = n * ring_bytes("all_sum", hidden, n)  # every rank sends its share
    if mode == "pipeline":
        return Traffic(mode, n, layers, 0, (n - 1) * hidden, all_sum + n * ring_bytes("all_sum", vocab, n))
    head = n * ring_bytes("all_gather", vocab / n, n)
    return Traffic(mode, n, layers, 2 * all_sum, 0, all_sum + head)


class Count:
    """Calls and bytes this rank sent through mx.distributed, by operation."""

    def __init__(self):
        self.calls: Dict[str, int] = defaultdict(int)
        self.sent: Dict[str, float] = defaultdict(float)

    def add(self, op: str, nbytes: int, ranks: int) -> None:
        self.calls[op] += 1
        self.sent[op] += ring_bytes(op, nbytes, ranks)

    @property
    def total(self) -> float:
        return sum(self.sent.values())

    def reset(self) -> None:
        self.calls.clear()
        self.sent.clear()


COUNTED_OPS = ("all_sum", "all_gather", "all_max", "all_min", "sum_scatter", "send")


@contextlib.contextmanager
def counted(namespace=None) -> Iterator[Count]:
    """Within the block every collective of `namespace` (default mx.distributed) also adds its ring bytes to the
    Count it yields; the functions are restored after."""
    namespace = namespace if namespace is not None else mx.distributed
    count = Count()
    originals = {op: getattr(namespace, op) for op in COUNTED_OPS if hasattr(namespace, op)}
    for op, f in originals.items():
        setattr(namespace, op, _counting(op, f, count))
    try:
        yield count
    finally:
        for op, f in originals.items():
            setattr(namespace, op, f)


def _counting(op: str, f: Callable, count: Count) -> Callable:
    def call(x, *args, group=None, **kwargs):
        ranks = (group if group is not None else mx.distributed.init()).size()
        count.add(op, x.nbytes, ranks)  # shape and dtype only: nothing is evaluated here
        return f(x, *args, group=group, **kwargs)

    call.__name__ = op
    return call
