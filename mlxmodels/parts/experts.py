"""Stacked experts: E linear layers in one (E, out, in) tensor, applied per token with `mx.gather_mm`.

No Python loop over experts: each token row is multiplied by the experts its indices name. With many rows,
rows are sorted by expert first so each expert's weights are read once (`sorted_indices=True`).
"""

import math

import mlx.core as mx
import mlx.nn as nn

from .ffn import ACTIVATIONS
from .quantized import QuantizedStack

SORT_THRESHOLD = 64  # rows x top-k above which sorting by expert pays for itself


class SwitchLinear(nn.Module):
    def __init__(self, in_dims: int, out_dims: int, n_experts: int):
        super().__init__()
        bound = math.sqrt(1.0 / in_dims)
        self.weight = mx.random.uniform(-bound, bound, (n_experts, out_dims, in_dims))

    def __call__(self, x, idx, sorted_indices=False):
        # x: (..., 1, in) broadcast against idx (...); -> (..., 1, out)
        w = self.weight.swapaxes(-1, -2)
        if x.dtype != mx.float32 and mx.default_device() == mx.cpu:
            # MLX's CPU gather_mm is float32-only: compute there, return in the model's dtype
            y = mx.gather_mm(x.astype(mx.float32), w.astype(mx.float32), rhs_indices=idx, sorted_indices=sorted_indices)
            return y.astype(x.dtype)
        return mx.gather_mm(x, w, rhs_indices=idx, sorted_indices=sorted_indices)

    def to_quantized(self, group_size: int = 64, bits: int = 4, mode: str = "affine"):
        return QuantizedSwitchLinear(self.weight, group_size, bits, mode)


class QuantizedSwitchLinear(QuantizedStack):
    def __call__(self, x, idx, sorted_indices=False):
        return mx.gather_qmm(x, self["weight"], self["scales"], self.get("biases"), rhs_indices=idx, transpose=True,
                             sorted_indices=sorted_indices, **self.options())


class SwitchMLP(nn.Module):
    """Gated experts: down(act(gate(x)) * up(x)) for each (token, chosen expert) pair."""

    def __init__(self, hidden: int, inter: int, n_experts: int, act: str = "silu"):
        super().__init__()
        self.gate_proj = SwitchLinear(hidden, inter, n_experts)
        self.up_proj = SwitchLinear(hidden, inter, n_experts)
        self.down_proj = SwitchLinear(inter, hidden, n_experts)
        self.act = ACTIVATIONS[act]

    def __call__(self, x, idx):
        """x: (N, D) shared by a token's experts, or (N, k, D) one input per chosen expert; idx (N, k) -> (N, k, D)."""
        N, k = idx.shape
        x = x[:, None, None, :] if x.ndim == 2 else x[:, :, None, :]  # (N, 1|k, 1, D)
        if idx.size < SORT_THRESHOLD:
            return self._apply(x, idx, False).squeeze(-2)
        flat = idx.reshape(-1)
        order = mx.argsort(flat)  # rows grouped by expert
        rows = x.reshape(-1, x.shape[-1])[order // k if x.shape[1] == 1 else order][:, None, :]  # (N*k, 1, D)
        y = self._apply(rows, flat[order], True)  # (N*k, 1, D)
        return y.squeeze(-2)[mx.argsort(order)].reshape(N, k, -1)

    def _apply(self, x, idx, sorted_indices):
        h = self.act(self.gate_proj(x, idx, sorted_indices)) * self.up_proj(x, idx, sorted_indices)
        return self.down_proj(h, idx, sorted_indices)
