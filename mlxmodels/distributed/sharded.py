"""Modules that hold one rank's cut of a weight, with the collective that makes their output whole passed in.

Tensor mode splits a matrix one of two ways. Output rows (q/k/v, gate/up, the vocabulary) need nothing but a smaller
plain module, except the head, whose logits every rank needs whole: an all_gather. Input columns (o_proj,
down_proj) give each rank a partial product of the full output: one all_sum, then the bias, added once. The
collectives arrive as arguments (`all_sum`, a VocabSplit), so the same modules run on one rank or many.
"""

from fractions import Fraction

import mlx.core as mx
import mlx.nn as nn

from ..parts.moe import MoE
from .layout import Slice


class VocabSplit:
    """Rows [start, stop) of a vocabulary of `vocab` for this rank (remainders spread over the first ranks' cuts),
    and the gather that puts every rank's logits back together."""

    def __init__(self, vocab: int, rank: int, size: int, group):
        self.vocab, self.group = vocab, group
        bounds = [(vocab * r // size, vocab * (r + 1) // size) for r in range(size)]
        self.start, self.stop = bounds[rank]
        self.width = max(hi - lo for lo, hi in bounds)  # all_gather needs equal parts: short ones are padded
        # positions of the real rows among the gathered (size * width) ones; None when no part is padded
        self._keep = None if all(hi - lo == self.width for lo, hi in bounds) else mx.array(
            [r * self.width + i for r, (lo, hi) in enumerate(bounds) for i in range(hi - lo)])

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def cut(self) -> Slice:
        return Slice(0, Fraction(self.start, self.vocab), Fraction(self.stop, self.vocab))

    def local(self, ids):
        """ids (B, T) of the whole vocabulary -> (row indices here, clamped; (B, T) mask of the ids this rank holds)."""
        inside = (ids >= self.start) & (ids < self.stop)
        return mx.clip(ids - self.start, 0, self.rows - 1), inside

    def gather(self, logits):
        """(..., rows) of this rank -> (..., vocab) on every rank."""
        if self.rows < self.width:
            logits = mx.pad(logits, [(0, 0)] * (logits.ndim - 1) + [(0, self.width - self.rows)])
        parts = mx.distributed.all_gather(logits[None], group=self.group)  # (size, ..., width)
        whole = mx.moveaxis(parts, 0, -2).reshape(*logits.shape[:-1], -1)  # (..., size * width)
        return whole if self._keep is None else mx.take(whole, self._keep, axis=-1)


class VocabEmbedding(nn.Embedding):
    """This rank's rows of the embedding: ids it does not hold embed as zeros, so one all_sum gives every row."""

    def __init__(self, split: VocabSplit, dims: int, all_sum):
        super().__init__(split.rows, dims)
        self._split, self._all_sum = split, all_sum

    def __call__(self, ids):
        rows, inside = self._split.local(ids)
        return self._all_sum(super().__call__(rows) * inside[..., None])  # (B, T, D)

    def as_linear(self, x):
        return self._split.gather(super().as_linear(x))  # tied head: (B, T, vocab)

    def to_quantized(self, group_size: int = None, bits: int = None, mode: str = "affine"):
        return QuantizedVocabEmbedding(self._split, self.weight.shape[1], self._all_sum, group_size, bits, mode)


class QuantizedVocabEmbedding(nn.QuantizedEmbedding):
    def __init__(self, split: VocabSplit, dims: int, all_sum, group_size, bits, mode):
        super().__init__(split.rows, dims, group_size, bits, mode)
        self._split, self._all_sum = split, all_sum

    def __call__(self, ids):
        rows, inside = self._split.local(ids)
        return self._all_sum(super().__call__(rows) * inside[..., None])

    def as_linear(self, x):
        return self._split.gather(super().as_linear(x))


class VocabLinear(nn.Linear):
    """The head's rows for this rank's part of the vocabulary; the logits gathered whole on every rank."""

    def __init__(self, dims: int, split: VocabSplit):
        super().__init__(dims, split.rows, bias=False)
        self._split = split

    def __call__(self, x):
        return self._split.gather(super().__call__(x))

    def to_quantized(self, group_size: int = None, bits: int = None, mode: str = "affine"):
        return QuantizedVocabLinear(self.weight.shape[1], self._split, group_size, bits, mode)


class QuantizedVocabLinear(nn.QuantizedLinear):
    def __init__(self, dims: int, split: VocabSplit, group_size, bits, mode):
        super().__init__(dims, split.rows, False, group_size, bits, mode)
        self._split = split

    def __call__(self, x):
        return self._split.gather(super().__call__(x))


class SumLinear(nn.Linear):
    """A Linear over this rank's columns of the input features: partial products summed across ranks, then the
    bias (whole on every rank, added once after the sum)."""

    def __init__(self, in_dims: int, out_dims: int, bias: bool, all_sum):
        super().__init__(in_dims, out_dims, bias=bias)
        self._all_sum = all_sum

    def __call__(self, x):
        y = self._all_sum(x @ self.weight.T)
        return y + self.bias if "bias" in self else y

    def to_quantized(self, group_size: int = None, bits: int = None, mode: str = "affine"):
        out_dims, in_dims = self.weight.shape
        return QuantizedSumLinear(in_dims, out_dims, "bias" in self, self._all_sum, group_size, bits, mode)


class QuantizedSumLinear(nn.QuantizedLinear):
    def __init__(self, in_dims: int, out_dims: int, bias: bool, all_sum, group_size, bits, mode):
        super().__init__(in_dims, out_dims, bias, group_size, bits, mode)
        self._all_sum = all_sum

    def __call__(self, x):
        y = self._all_sum(mx.quantized_matmul(x, self["weight"], scales=self["scales"], biases=self.get("biases"),
                                              transpose=True, group_size=self.group_size, bits=self.bits,
                                              mode=self.mode))
        return y + self["bias"] if "bias" in self else y


def summed(linear: nn.Linear, all_sum) -> SumLinear:
    """The SumLinear taking `linear`'s place: its shape (already this rank's columns) and whether it has a bias."""
    out_dims, in_dims = linear.weight.shape
    return SumLinear(in_dims, out_dims, "bias" in linear, all_sum)


class SummedMoE(MoE):
    """Experts with this rank's part of every expert's intermediate (and of the shared experts): the routed and
    shared outputs are each linear in that part, so one all_sum of the layer's output makes it whole. The router
    is whole on every rank and sees the same input, bit for bit (MLX's ring all_sum reduces each segment on one rank
    and copies it to the others), so every rank routes alike."""

    def __init__(self, hidden: int, spec, all_sum):
        super().__init__(hidden, spec)
        self._all_sum = all_sum

    def __call__(self, x):
        return self._all_sum(super().__call__(x))
