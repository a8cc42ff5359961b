"""What one rank holds: a Layout turns the whole model's spec and weight names into this rank's.

Sharding is a transformation of data, never a branch inside parts or families: a Layout gives the rank's own
ModelSpec (fewer layers, heads, FFN columns or experts), says where each tensor of the whole checkpoint goes on
this rank (`place`: a local name and the part of the tensor to read), and builds the rank's modules with the
collectives wired in as collaborators. `load.py` reads exactly the placed parts, so a rank never holds another's.
"""

from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from ..config import ModelError
from ..spec import ModelSpec


class ParallelError(ModelError):
    """A model that cannot be split this way, or ranks that cannot run it together."""


@dataclass(frozen=True)
class Slice:
    """The part [start, stop) of a tensor along `axis`, as fractions of that axis's length.

    Fractions, not indices, so the same Slice cuts a float weight and a quantized weight's packed codes, scales
    and biases alike (their last axes are the input features / 32 * bits and / group_size)."""

    axis: int
    start: Fraction
    stop: Fraction

    @classmethod
    def part(cls, axis: int, index: int, count: int) -> "Slice":
        """The index-th of `count` equal parts."""
        return cls(axis, Fraction(index, count), Fraction(index + 1, count))

    def bounds(self, shape: tuple, name: str) -> tuple:
        """-> (axis, start, stop) in elements of `shape`; a cut that falls inside an element is refused."""
        n = shape[self.axis]
        lo, hi = self.start * n, self.stop * n
        if lo.denominator != 1 or hi.denominator != 1:
            raise ParallelError(f"tensor {name} {tuple(shape)} cannot be cut at {self.start}..{self.stop} of axis "
                                f"{self.axis} (quantization groups or heads do not divide evenly); use another "
                                "--parallel mode or fewer ranks")
        return self.axis % len(shape), int(lo), int(hi)

    def take(self, a: mx.array, name: str) -> mx.array:
        axis, lo, hi = self.bounds(a.shape, name)
        return a[(slice(None),) * axis + (slice(lo, hi),)]


Placement = Optional[tuple]  # (local name, Optional[Slice]) or None: this rank does not hold the tensor


class Layout:
    """One parallel mode for one rank. Subclasses set `local_spec` in __init__(spec, group, budgets) and implement
    `place` and `build`; __init__ raises ParallelError (one line: what does not divide, what to use instead) when
    the mode does not apply to the model or the group size.

    spec: the whole model's spec (after load's adjustments, e.g. MTP dropped when the checkpoint has none);
    group: mx.distributed group (rank(), size()); budgets: bytes each rank may hold, or None when unknown."""

    name = ""

    def __init__(self, spec: ModelSpec, group, budgets: Optional[list] = None):
        self.spec, self.group, self.budgets = spec, group, budgets
        self.rank, self.size = group.rank(), group.size()
        self.local_spec = spec

    def place(self, name: str, shape: tuple) -> Placement:
        """A tensor of the whole model by its model-space name (our module names, as after the family's
        map_weights, `.scales`/`.biases` of quantized modules included) and its whole shape -> where it goes here."""
        raise NotImplementedError

    def build(self) -> nn.Module:
        """This rank's model, float and unloaded, shaped for `local_spec`, with Decoder's interface: `spec`
        (the local spec: caches are built from it), `model(ids, cache)` -> the final hidden states (B, T, D) on every
        rank, `head(h)` -> the full (B, T, V) logits on every rank, `__call__`, `make_cache`, `make_mtp_cache`,
        `mtp_modules`, `mtp_step`. Its parameter names are the local names `place` gives. Modules holding a cut
        weight must offer `to_quantized(group_size, bits, mode)` as nn.Linear does: the loader quantizes the built
        model as the checkpoint stores it, then loads the placed tensors."""
        raise NotImplementedError
