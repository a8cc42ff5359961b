"""Dispatch: our kernels on a Metal GPU unless switched off, reference MLX ops elsewhere, same results."""

import mlx.core as mx
import numpy as np
import pytest

import metal_kernels
from metal_kernels import reference
from tests.kernels.test_paged_attention import dense_case, mla_case


@pytest.fixture
def restore_choice():
    yield
    metal_kernels.use_kernels(None)


def test_kernels_run_only_on_a_metal_gpu_and_can_be_switched_off(monkeypatch, restore_choice):
    monkeypatch.delenv("MLXMODELS_KERNELS", raising=False)
    monkeypatch.setattr(mx.metal, "is_available", lambda: False)
    assert not metal_kernels.kernels_enabled()
    metal_kernels.use_kernels(True)
    assert not metal_kernels.kernels_enabled(), "no GPU: forcing them on still runs the reference"
    monkeypatch.setattr(mx.metal, "is_available", lambda: True)
    metal_kernels.use_kernels(None)
    assert metal_kernels.kernels_enabled()
    metal_kernels.use_kernels(False)
    assert not metal_kernels.kernels_enabled()
    metal_kernels.use_kernels(None)
    monkeypatch.setenv("MLXMODELS_KERNELS", "mlx")
    assert not metal_kernels.kernels_enabled()


def dispatch_cases():
    q, k_pool, v_pool, tables, lens = dense_case(4, 64, 2, mx.float32, 16, [5, 40])
    ql, qr, pool, mtables, mlens = mla_case(4, 64, 32, mx.float32, 16, [7, 20])
    rng = np.random.default_rng(0)
    x = mx.array(rng.standard_normal((1, 3, 256)).astype(np.float32))  # (..., K): leading dims kept
    gate = mx.quantize(mx.array(rng.standard_normal((40, 256)).astype(np.float32)), group_size=64, bits=4)
    up = mx.quantize(mx.array(rng.standard_normal((40, 256)).astype(np.float32)), group_size=64, bits=4)
    return [
        (metal_kernels.paged_attention(q, k_pool, v_pool, tables, lens, 0.1, window=9),
         reference.paged_attention(q, k_pool, v_pool, tables, lens, 0.1, window=9)),
        (metal_kernels.paged_mla(ql, qr, pool, mtables, mlens, 0.1), reference.paged_mla(ql, qr, pool, mtables, mlens, 0.1)),
        (metal_kernels.qmv(x, *gate, 64, 4), reference.qmv(x, *gate, 64, 4)),
        (metal_kernels.qmv_swiglu(x, gate, up, 64, 4), reference.qmv_swiglu(x, gate, up, 64, 4)),
    ]


def test_entry_points_equal_the_reference():
    for got, want in dispatch_cases():
        assert got.shape == want.shape
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=1e-4)


@pytest.mark.metal
@pytest.mark.skipif(not mx.metal.is_available(), reason="no Metal GPU here")
def test_entry_points_run_the_kernels_on_metal(restore_choice):
    metal_kernels.use_kernels(None)
    assert metal_kernels.kernels_enabled()
    test_entry_points_equal_the_reference()
