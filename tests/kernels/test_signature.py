"""The emulator compiles exactly the source MLX would: our signature writer against the text MLX itself prints
(`verbose=True` while the call is traced under mx.export_function, which works without a GPU)."""

import mlx.core as mx
import pytest

from metal_kernels import emulator
from metal_kernels.launch import TYPE_NAMES, KernelDef, Launch
from metal_kernels.paged import attention_launch, mla_launch
from metal_kernels.quantized import qmv_launch, qmv_swiglu_launch


def assert_same_as_mlx(launch: Launch) -> None:
    ours = emulator.write_source(launch)
    assert ours == emulator.mlx_source(launch)


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("batch", [3, 8])  # context_lens (B,) moves from constant to device memory at 8
def test_paged_attention_source(dtype, batch):
    q, pool = mx.zeros((batch, 8, 64), dtype), mx.zeros((5, 16, 2, 64), dtype)
    tables, lens = mx.zeros((batch, 2), mx.int32), mx.ones((batch,), mx.int32)
    assert_same_as_mlx(attention_launch(q, pool, pool, tables, lens, 0.125, softcap=2.0, window=4))


def test_paged_mla_source():
    assert_same_as_mlx(mla_launch(mx.zeros((2, 8, 64)), mx.zeros((2, 8, 32)), mx.zeros((4, 16, 96)),
                           mx.zeros((2, 3), mx.int32), mx.ones((2,), mx.int32), 0.1))


@pytest.mark.parametrize("bits", [4, 8])
def test_qmv_sources(bits):
    x = mx.zeros((1, 256), mx.float16)
    w, s, b = mx.quantize(mx.zeros((40, 256), mx.float16), group_size=32, bits=bits)
    assert_same_as_mlx(qmv_launch(x, w, s, b, 32, bits))
    assert_same_as_mlx(qmv_swiglu_launch(x, (w, s, b), (w, s, b), 32, bits))


EVERY_ATTRIBUTE = "\n".join(f"  // {name}" for name, _ in emulator.signature.ATTRIBUTES)


@pytest.mark.parametrize("body, template", [
    # every attribute, shape/strides/ndim of one input, a scalar and a tiny (constant) input; int/bool/dtype args
    (EVERY_ATTRIBUTE + "\n  // a_shape a_strides a_ndim\n  out[0] = a[0];",
     [("T", mx.float32), ("N", -3), ("FLAG", True), ("OFF", False), ("U", mx.uint8)]),
    ("  out[0] = a[0] + b_ndim;", []),  # no template; no attribute (MLX's index rule for the closing parenthesis)
    ("  uint i = thread_position_in_grid.x; out[i] = a[i];", [("V", mx.int16)]),
])
def test_synthetic_kernels_match(body, template):
    k = KernelDef("synthetic", "", ("a", "b", "s"), ("out", "out2"))
    inputs = [mx.zeros((4, 3), mx.int32), mx.zeros((2,), mx.bool_), mx.array(1.5, mx.float16)]
    launch = Launch(k, inputs, template, (32, 1, 1), (32, 1, 1), [(4,), (2, 2)], [mx.float32, mx.bfloat16],
                    source=body)
    assert_same_as_mlx(launch)


def test_type_names_match_mlx():
    dtypes = sorted(TYPE_NAMES, key=str)
    k = KernelDef("types", "", tuple(f"in{i}" for i in range(len(dtypes))), ("out",))
    launch = Launch(k, [mx.zeros((9,), d) for d in dtypes], [], (1, 1, 1), (1, 1, 1), [(1,)], [mx.float32],
                    source="  out[0] = 0;")
    assert_same_as_mlx(launch)
