"""Low-rank adapters over a frozen layer, computed as mlx_lm.lora trains them, for inference only.

LoRA: y = base(x) + scale * (x @ A) @ B. DoRA: the adapted weight W + scale * (A @ B)^T has each output row rescaled to
the learned magnitude m, so y = g * (W x + scale * (x @ A) @ B) + b with g = m / |W + scale * (A @ B)^T|_row; g is
constant at inference, so it is computed once here (mlx-lm recomputes it every call, for training). The base keeps
its own kernel (a quantized matmul stays one), and the wrapped layer is named `linear` as in mlx-lm. `fused_weight`
gives the dense weight a fused layer holds (convert --adapter-path).
"""

import mlx.core as mx
import mlx.nn as nn


def dense_weight(layer: nn.Module) -> mx.array:
    """A layer's weight as floats: dequantized when it is stored quantized (Linear and stacked experts alike)."""
    if "scales" not in layer:
        return layer.weight
    return mx.dequantize(layer.weight, layer.scales, layer.get("biases"), group_size=layer.group_size,
                         bits=layer.bits, mode=getattr(layer, "mode", "affine"))


def delta(lora_a: mx.array, lora_b: mx.array, scale: float) -> mx.array:
    """The dense weight change: (in, r), (r, out) -> (out, in); stacked experts (E, r, in), (E, out, r) -> (E, out, in)."""
    if lora_a.ndim == 3:
        return (scale * lora_b) @ lora_a
    return (scale * lora_b.T) @ lora_a.T


def dora_gain(weight: mx.array, lora_a, lora_b, scale: float, m: mx.array) -> mx.array:
    """(out,) m / |adapted row|, as mlx-lm's DoRALinear computes it at each call."""
    adapted = weight + delta(lora_a, lora_b, scale)
    return m / mx.linalg.norm(adapted, axis=1)


def fused_weight(weight: mx.array, lora_a, lora_b, scale: float, m=None) -> mx.array:
    """The float weight of the base with the adapter folded in, in the base weight's dtype (mlx-lm's fuse)."""
    w = weight + delta(lora_a, lora_b, scale).astype(weight.dtype)
    return w if m is None else (m / mx.linalg.norm(w, axis=1))[:, None] * w


class LoRALinear(nn.Module):
    """base(x) + scale * (x @ lora_a) @ lora_b over any layer computing x @ W.T (+ b): Linear, QuantizedLinear and
    the MoE router (whose float32 logits stay float32)."""

    def __init__(self, linear: nn.Module, lora_a: mx.array, lora_b: mx.array, scale: float):
        super().__init__()
        self.linear, self.lora_a, self.lora_b, self.scale = linear, lora_a, lora_b, scale

    def __call__(self, x):
        z = (x @ self.lora_a) @ self.lora_b  # (..., in) -> (..., r) -> (..., out)
        return self.linear(x) + (self.scale * z).astype(x.dtype)

    def fused(self) -> mx.array:
        return fused_weight(dense_weight(self.linear), self.lora_a, self.lora_b, self.scale)


class DoRALinear(LoRALinear):
    """LoRALinear, except each output is rescaled by DoRA's gain g (the bias added after, unscaled)."""

    def __init__(self, linear: nn.Module, lora_a: mx.array, lora_b: mx.array, scale: float, m: mx.array):
        super().__init__(linear, lora_a, lora_b, scale)
        self.m = m
        self._gain = dora_gain(dense_weight(linear), lora_a, lora_b, scale, m)  # (out,) not a parameter

    def __call__(self, x):
        out = super().__call__(x)  # W x + b + scale z
        if "bias" in self.linear:  # g (W x + scale z) + b, from one call of the base's own kernel
            return self._gain.astype(x.dtype) * out + (1 - self._gain).astype(x.dtype) * self.linear.bias
        return self._gain.astype(x.dtype) * out

    def fused(self) -> mx.array:
        return fused_weight(dense_weight(self.linear), self.lora_a, self.lora_b, self.scale, self.m)


class LoRASwitchLinear(nn.Module):
    """Stacked experts (SwitchLinear or its quantized form) with one adapter per expert, picked by the same indices."""

    def __init__(self, linear: nn.Module, lora_a: mx.array, lora_b: mx.array, scale: float):
        super().__init__()
        self.linear, self.lora_a, self.lora_b, self.scale = linear, lora_a, lora_b, scale

    def __call__(self, x, idx, sorted_indices=False):
        y = self.linear(x, idx, sorted_indices)
        z = x if x.dtype == mx.float32 or mx.default_device() != mx.cpu else x.astype(mx.float32)  # CPU gather_mm
        for t in (self.lora_a, self.lora_b):  # (..., 1, in) -> (..., 1, r) -> (..., 1, out)
            z = mx.gather_mm(z, t.swapaxes(-1, -2).astype(z.dtype), rhs_indices=idx, sorted_indices=sorted_indices)
        return y + (self.scale * z).astype(x.dtype)

    def fused(self) -> mx.array:
        return fused_weight(dense_weight(self.linear), self.lora_a, self.lora_b, self.scale)
