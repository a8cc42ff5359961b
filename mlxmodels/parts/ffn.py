"""Feed-forward: gated MLP (SwiGLU, GeGLU) and plain MLP (GPT-2)."""

import mlx.core as mx
import mlx.nn as nn

from ..spec import FFNSpec

ACTIVATIONS = {
    "silu": nn.silu,
    "gelu": nn.gelu,  # exact (erf)
    "gelu_tanh": nn.gelu_approx,  # tanh approximation: gelu_new, gelu_pytorch_tanh
    "relu": nn.relu,
}


class MLP(nn.Module):
    def __init__(self, hidden: int, spec: FFNSpec):
        super().__init__()
        self.gated = spec.gated
        if spec.gated:
            self.gate_proj = nn.Linear(hidden, spec.hidden, bias=spec.bias)
        self.up_proj = nn.Linear(hidden, spec.hidden, bias=spec.bias)
        self.down_proj = nn.Linear(spec.hidden, hidden, bias=spec.bias)
        self.act = ACTIVATIONS[spec.act]

    def __call__(self, x):
        if self.gated:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(self.act(self.up_proj(x)))
