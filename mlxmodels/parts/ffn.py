"""Feed-forward: gated MLP (SwiGLU, GeGLU) and plain MLP (GPT-2)."""

import mlx.nn as nn

import metal_kernels

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
            if self.act is nn.silu and fusable(self.gate_proj, self.up_proj) and metal_kernels.kernels_enabled():
                g, u = self.gate_proj, self.up_proj
                # decode on a Mac: one pass over both 4/8-bit matrices (falls back itself for long prefills)
                h = metal_kernels.qmv_swiglu(x, (g.weight, g.scales, g.biases), (u.weight, u.scales, u.biases),
                                             g.group_size, g.bits)
            else:
                h = self.act(self.gate_proj(x)) * self.up_proj(x)
            return self.down_proj(h)
        return self.down_proj(self.act(self.up_proj(x)))


def fusable(gate, up) -> bool:
    """Both projections affine-quantized alike without bias: the fused SwiGLU matvec kernel can run them."""
    return all(isinstance(m, nn.QuantizedLinear) and getattr(m, "mode", "affine") == "affine" and "bias" not in m
               for m in (gate, up)) and (gate.bits, gate.group_size) == (up.bits, up.group_size)
