"""The gated MLP routes 4/8-bit decode through the fused SwiGLU matvec kernel when the kernels run (on a Mac)."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np

import metal_kernels
from metal_kernels import reference
from mlxmodels.parts.ffn import MLP, fusable
from mlxmodels.spec import FFNSpec


def test_fused_path_is_taken_and_equal(monkeypatch):
    mx.random.seed(0)
    mlp = MLP(128, FFNSpec(256))
    x = mx.random.normal((1, 1, 128))
    nn.quantize(mlp, group_size=64, bits=4)
    assert fusable(mlp.gate_proj, mlp.up_proj)
    plain = mlp(x)  # no Metal GPU here: the unfused path
    calls = []

    def fake_kernel(x, gate, up, group_size, bits):  # the emulator checks the kernel itself against reference
        calls.append((group_size, bits))
        return reference.qmv_swiglu(x, gate, up, group_size, bits)

    monkeypatch.setattr(metal_kernels, "kernels_enabled", lambda: True)
    monkeypatch.setattr(metal_kernels, "qmv_swiglu", fake_kernel)
    np.testing.assert_allclose(np.array(mlp(x)), np.array(plain), atol=1e-5)
    assert calls == [(64, 4)]


def test_unquantized_or_mixed_projections_are_not_fused():
    mlp = MLP(128, FFNSpec(256))
    assert not fusable(mlp.gate_proj, mlp.up_proj)
    nn.quantize(mlp, group_size=64, bits=4, class_predicate=lambda p, m: p == "gate_proj")
    assert not fusable(mlp.gate_proj, mlp.up_proj)
