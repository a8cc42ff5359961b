"""Quantized stacked weights (experts, per-head matrices): the part MLX's QuantizedLinear does not cover."""

import mlx.core as mx
import mlx.nn as nn


class QuantizedStack(nn.Module):
    """A (..., out, in) weight quantized along `in` as MLX's affine or mx formats; subclasses define __call__."""

    def __init__(self, weight, group_size: int, bits: int, mode: str = "affine"):
        super().__init__()
        self.group_size, self.bits, self.mode = group_size, bits, mode
        self.weight, self.scales, *biases = mx.quantize(weight, group_size, bits, mode=mode)
        if biases:
            self.biases = biases[0]
        self.freeze()

    def options(self) -> dict:
        return dict(group_size=self.group_size, bits=self.bits, mode=self.mode)
