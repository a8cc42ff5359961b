"""Quantized stacked weights (experts, per-head matrices): the part MLX's QuantizedLinear does not cover; and
reading back a triplet a folder stores quantized where our module is float."""

import mlx.core as mx
import mlx.nn as nn

from ..errors import ModelError


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


def take_dequantized(weights: dict, path: str, cfg) -> mx.array:
    """Remove `path`'s weight/scales/biases from `weights` -> the float weight, dequantized as config.json's
    `quantization` entry says (lazily: on placeholders nothing is read)."""
    q = cfg.get("quantization") or cfg.get("quantization_config") or {}
    if "bits" not in q:
        raise ModelError(f"{path}.weight is stored quantized but config.json has no `quantization` entry with "
                         "bits; the folder is damaged, re-convert or re-download it")
    own = q.get(path) if isinstance(q.get(path), dict) else {}  # a per-module override, else the defaults
    params = {"group_size": own.get("group_size", q.get("group_size", 64)), "bits": own.get("bits", q["bits"]),
              "mode": own.get("mode", q.get("mode", "affine"))}
    w, scales, biases = (weights.pop(f"{path}.{k}", None) for k in ("weight", "scales", "biases"))
    try:
        return mx.dequantize(w, scales, biases, **params)
    except (TypeError, ValueError):  # MLX checks the shapes and dtype as it builds the (lazy) result
        raise ModelError(f"{path}: the stored weight {_shape(w)} and scales {_shape(scales)} do not fit config.json's "
                         f"`quantization` entry for it ({params['mode']}, {params['bits']} bits, group size "
                         f"{params['group_size']}); the folder is damaged, re-convert or re-download it") from None


def _shape(t) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).split('.')[-1]}" if t is not None else "(missing)"
