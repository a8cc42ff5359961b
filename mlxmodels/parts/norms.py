"""Norms: RMSNorm (optionally with Gemma's 1 + w), LayerNorm, and the norm factory used by every part."""

import mlx.core as mx
import mlx.nn as nn

from ..spec import NormSpec
from .compiled import use_compiled


@mx.compile
def _fused_rms_norm(x, weight, eps: float, unit_offset: bool):
    # MLX's CPU backend runs mx.fast.rms_norm as about ten separate ops; compiled, they fuse into three
    return mx.fast.rms_norm(x, (1.0 + weight if unit_offset else weight).astype(x.dtype), eps)


class RMSNorm(nn.Module):
    def __init__(self, dims: int, eps: float = 1e-6, unit_offset: bool = False):
        super().__init__()
        # Gemma stores w around 0 and scales by (1 + w); the weight keeps its checkpoint meaning either way.
        self.weight = mx.zeros((dims,)) if unit_offset else mx.ones((dims,))
        self.eps = eps
        self.unit_offset = unit_offset

    def __call__(self, x):
        if x.ndim > 1 and use_compiled(x.shape[-2]):
            return _fused_rms_norm(x, self.weight, self.eps, self.unit_offset)
        w = 1.0 + self.weight if self.unit_offset else self.weight
        return mx.fast.rms_norm(x, w.astype(x.dtype), self.eps)


class LayerNorm(nn.Module):
    def __init__(self, dims: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.weight = mx.ones((dims,))
        if bias:
            self.bias = mx.zeros((dims,))
        self.eps = eps

    def __call__(self, x):
        return mx.fast.layer_norm(x, self.weight, self.get("bias"), self.eps)


def l2_norm(x, eps: float):
    """Llama 4's weightless QK-norm: x / sqrt(mean(x^2) + eps)."""
    return mx.fast.rms_norm(x, None, eps)


def make_norm(spec: NormSpec, dims: int) -> nn.Module:
    if spec.kind == "layer":
        return LayerNorm(dims, spec.eps, spec.bias)
    return RMSNorm(dims, spec.eps, spec.unit_offset)
