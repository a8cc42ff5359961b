"""Dispatch: our kernels only on a Metal GPU that is the default device, after a self-test and (mode auto) a timing
against the built-in; everything else, and every failure, runs MLX's built-in op, with one notice per failure.

The logic is tested on a stand-in entry point ("double": x -> 2x) with a fake clock, so each decision is forced;
tests/kernels/test_simulated.py drives the real entry points through whole models."""

import json
import os

import mlx.core as mx
import numpy as np
import pytest

import metal_kernels
from metal_kernels import dispatch, reference
from metal_kernels.dispatch import Dispatch, Entry
from metal_kernels.plan import Plan, Unsupported, pow2_at_least
from metal_kernels.verdicts import MAX_BYTES, Verdicts, file_name
from tests.kernels.test_paged_attention import dense_case, mla_case


@pytest.fixture
def restore_choice():
    yield
    metal_kernels.use_kernels(None)


def test_kernels_run_only_on_a_metal_gpu_that_is_the_default_device_and_can_be_switched_off(monkeypatch,
                                                                                            restore_choice):
    monkeypatch.delenv("MLXMODELS_KERNELS", raising=False)
    monkeypatch.setattr(mx.metal, "is_available", lambda: False)
    assert not dispatch.metal_gpu()
    monkeypatch.setattr(mx.metal, "is_available", lambda: True)
    assert mx.default_device() == mx.cpu
    assert not dispatch.metal_gpu(), "a Mac whose default device is the CPU gets MLX's ops"
    assert not metal_kernels.kernels_enabled()

    d = Dispatch(on_gpu=lambda: True)
    assert d.enabled() and d.mode == "auto"
    d.set_mode("off")
    assert not d.enabled()
    monkeypatch.setenv("MLXMODELS_KERNELS", "mlx")
    assert Dispatch(on_gpu=lambda: True).mode == "off"
    monkeypatch.setenv("MLXMODELS_KERNELS", "1")
    assert Dispatch(on_gpu=lambda: True).mode == "on"


def test_use_kernels_sets_the_process_dispatch_mode(monkeypatch, restore_choice):
    monkeypatch.delenv("MLXMODELS_KERNELS", raising=False)
    metal_kernels.use_kernels(False)
    assert dispatch.current().mode == "off"
    metal_kernels.use_kernels(True)
    assert dispatch.current().mode == "on"
    metal_kernels.use_kernels(None)
    assert dispatch.current().mode == "auto"


def test_an_unknown_mode_is_auto_with_one_notice(monkeypatch):
    monkeypatch.setenv("MLXMODELS_KERNELS", "fast")
    notes = []
    assert Dispatch(notify=notes.append).mode == "auto"
    assert len(notes) == 1 and "MLXMODELS_KERNELS='fast'" in notes[0]


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
        (metal_kernels.paged_mla(ql, qr, pool, mtables, mlens, 0.1),
         reference.paged_mla(ql, qr, pool, mtables, mlens, 0.1)),
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


# -- the decisions, on a stand-in entry point


class Clock:
    """Time moves only when a path says it took some: `cost` per kernel launch and per built-in call."""

    def __init__(self):
        self.now, self.reads = 0.0, 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


class Kernel:
    """A runner for the stand-in: counts launches, and returns 2x (right), 3x (wrong) or raises."""

    def __init__(self, clock: Clock, cost: float = 1e-6, how: str = "right", fails_from: int = 1 << 30):
        self.clock, self.cost, self.how, self.fails_from, self.launches = clock, cost, how, fails_from, []

    def __call__(self, launch):
        x = launch
        self.launches.append(x.size)
        self.clock.now += self.cost
        if self.how == "raise" or x.size >= self.fails_from:
            raise RuntimeError("[metal_kernel] Unable to build the kernel\nsecond line")
        return [x * (3 if self.how == "wrong" else 2)]


def double_entry(clock: Clock, builtin_cost: float = 2e-6) -> dict:
    def plan(x):
        if x.ndim != 1:
            raise Unsupported("the stand-in takes vectors")
        return Plan(f"double_{x.dtype}", f"n{pow2_at_least(x.size)}", lambda runner: runner(x)[0])

    def builtin(x):
        clock.now += builtin_cost
        return x * 2

    sample = lambda x: (mx.arange(4).astype(x.dtype),)  # noqa: E731
    timing = lambda x: (mx.ones((pow2_at_least(x.size),), x.dtype),)  # noqa: E731
    return {"double": Entry(plan, sample, timing, builtin)}


def make(tmp_path, how="right", kernel_cost=1e-6, builtin_cost=2e-6, mode="auto", on_gpu=True, fails_from=1 << 30):
    clock = Clock()
    kernel = Kernel(clock, kernel_cost, how, fails_from)
    notes = []
    d = Dispatch(runner=kernel, on_gpu=lambda: on_gpu, verdicts=Verdicts(tmp_path, "0.0", "test"), clock=clock,
                 notify=notes.append, entries=double_entry(clock, builtin_cost), mode=mode, device="test")
    return d, kernel, clock, notes


X = mx.arange(10).astype(mx.float32)


def test_a_faster_kernel_is_picked_once_per_shape_class_and_remembered_across_processes(tmp_path):
    d, kernel, _, notes = make(tmp_path)
    np.testing.assert_array_equal(np.array(d.call("double", (X,))), np.array(X * 2))
    decided = len(kernel.launches)
    assert decided == 1 + dispatch.WARMUP + dispatch.RUNS + 1, "self-test, warm-up, timed runs, the call"
    d.call("double", (X[:9],))  # same shape class (n16): nothing decided again
    assert len(kernel.launches) == decided + 1 and not notes
    [row] = d.verdicts()
    assert row["selftest"] == "pass" and row["pick"] == "kernel" and row["shape_class"] == "n16"
    assert row["kernel_us"] == pytest.approx(1.0) and row["builtin_us"] == pytest.approx(2.0)

    again, kernel2, clock2, _ = make(tmp_path)  # a new process, the same cache
    again.call("double", (X,))
    assert kernel2.launches == [10] and clock2.reads == 0, "neither self-test nor timing again"


def test_a_slower_kernel_loses_to_the_builtin(tmp_path):
    d, kernel, _, notes = make(tmp_path, kernel_cost=3e-6)
    d.call("double", (X,))
    n = len(kernel.launches)
    d.call("double", (X,))
    assert len(kernel.launches) == n and not notes
    assert d.verdicts()[0]["pick"] == "builtin"


def test_mode_on_self_tests_but_does_not_time(tmp_path):
    d, kernel, clock, _ = make(tmp_path, kernel_cost=3e-6, mode="on")
    d.call("double", (X,))
    assert kernel.launches == [4, 10] and clock.reads == 0


@pytest.mark.parametrize("how", ["wrong", "raise"])
def test_a_failing_kernel_is_off_for_the_variant_with_one_notice_and_remembered(tmp_path, how):
    d, kernel, _, notes = make(tmp_path, how=how)
    for _ in range(3):
        np.testing.assert_array_equal(np.array(d.call("double", (X,))), np.array(X * 2))
    assert kernel.launches == [4], "one self-test, never the real call"
    assert len(notes) == 1 and "double Metal kernel double_mlx.core.float32 failed its self-test on test" in notes[0]
    assert ("RuntimeError: [metal_kernel] Unable to build the kernel)" if how == "raise" else "max |kernel") in notes[0]
    d.call("double", (X.astype(mx.float16),))  # another variant: its own self-test, its own notice
    assert len(notes) == 2

    again, kernel2, _, notes2 = make(tmp_path, how=how)
    again.call("double", (X,))
    assert kernel2.launches == [] and notes2 == [], "known bad from the cache: no launch, no second notice"


def test_a_kernel_failing_at_a_larger_shape_falls_back_with_one_notice(tmp_path):
    d, kernel, _, notes = make(tmp_path, mode="on", fails_from=64)  # passes its self-test on 4 elements
    big = mx.arange(100).astype(mx.float32)
    for _ in range(2):
        np.testing.assert_array_equal(np.array(d.call("double", (big,))), np.array(big * 2))
    assert kernel.launches == [4, 100] and len(notes) == 1 and "failed on test (while running" in notes[0]
    d.set_mode("auto")
    d.call("double", (X,))  # another shape class of the same variant: off too
    assert kernel.launches == [4, 100]


def test_a_kernel_failing_at_the_timing_shapes_falls_back(tmp_path):
    d, kernel, _, notes = make(tmp_path, fails_from=16)  # the timing runs 128 elements
    d.call("double", (mx.arange(100).astype(mx.float32),))
    assert len(notes) == 1 and "at the timing shapes (n128)" in notes[0] and kernel.launches == [4, 128]
    assert d.verdicts()[0]["selftest"] == "fail"


def test_a_self_test_on_another_variant_vouches_for_nothing(tmp_path):
    d, kernel, _, notes = make(tmp_path)
    d.entries["double"] = d.entries["double"]._replace(sample=lambda x: (mx.arange(4).astype(mx.float16),))
    d.call("double", (X,))
    assert kernel.launches == [] and len(notes) == 1 and "inputs compile double_mlx.core.float16" in notes[0]


@pytest.mark.parametrize("why", ["mode off", "no GPU", "unsupported"])
def test_the_builtin_runs_without_a_launch(tmp_path, why):
    d, kernel, clock, notes = make(tmp_path, mode="off" if why == "mode off" else "auto", on_gpu=why != "no GPU")
    x = X.reshape(2, 5) if why == "unsupported" else X
    np.testing.assert_array_equal(np.array(d.call("double", (x,))), np.array(x * 2))
    assert kernel.launches == [] and clock.reads == 0 and not notes and d.verdicts() == []


def test_check_measures_now_whatever_the_mode_and_says_so(tmp_path):
    d, kernel, _, notes = make(tmp_path, mode="off", kernel_cost=3e-6)
    row = d.check("double", (X,))
    assert row == {"entry": "double", "variant": "double_mlx.core.float32", "shape_class": "n16", "selftest": "pass",
                   "reason": None, "kernel_us": pytest.approx(3.0), "builtin_us": pytest.approx(2.0),
                   "pick": "builtin"}
    assert len(kernel.launches) == 1 + dispatch.WARMUP + dispatch.RUNS and not notes
    bad, _, _, notes = make(tmp_path / "other", how="wrong")
    row = bad.check("double", (X,))
    assert row["selftest"] == "fail" and row["kernel_us"] is None and "max |kernel" in row["reason"] and not notes
    with pytest.raises(Unsupported):
        bad.check("double", (X.reshape(2, 5),))


def test_a_bad_cache_file_is_ignored_and_replaced(tmp_path):
    path = tmp_path / file_name("0.0", "test")
    bad_files = [b"{not json", b"\xff\xfe", json.dumps({"format": 1, "selftests": "x", "timings": []}).encode(),
                 json.dumps({"format": 1, "selftests": [{"variant": 3}], "timings": [{"pick": "kernel"}]}).encode(),
                 b" " * (MAX_BYTES + 1)]
    for data in bad_files:
        path.write_bytes(data)
        d, kernel, _, notes = make(tmp_path)
        d.call("double", (X,))
        assert kernel.launches[0] == 4 and not notes, "nothing trusted from the file: tested afresh"
        doc = json.loads(path.read_text())
        assert [r["variant"] for r in doc["selftests"]] == ["double_mlx.core.float32"] and len(doc["timings"]) == 1
    os.unlink(path)
    os.mkfifo(path)  # a reader must not block on it; the write replaces it
    d, kernel, _, _ = make(tmp_path)
    d.call("double", (X,))
    assert path.is_file()


def test_verdicts_from_another_kernel_source_do_not_count(tmp_path):
    d, _, _, _ = make(tmp_path)
    d.call("double", (X,))
    clock = Clock()
    kernel = Kernel(clock)
    other = Dispatch(runner=kernel, on_gpu=lambda: True, verdicts=Verdicts(tmp_path, "0.0", "test", source="new"),
                     clock=clock, notify=print, entries=double_entry(clock), mode="auto", device="test")
    other.call("double", (X,))
    assert kernel.launches[0] == 4, "an upgraded kernel is tested again"
    doc = json.loads((tmp_path / file_name("0.0", "test")).read_text())
    assert len(doc["selftests"]) == 2, "both sources' verdicts kept in the merged file"


def test_a_compiled_caller_gets_the_decision(tmp_path):
    d, kernel, _, notes = make(tmp_path, how="wrong")
    f = mx.compile(lambda x: d.call("double", (x,)) + 1)
    for _ in range(2):
        np.testing.assert_array_equal(np.array(f(X)), np.array(X * 2 + 1))
    assert kernel.launches == [4] and len(notes) == 1



def test_a_half_precision_kernel_is_held_to_the_builtin_in_float32(tmp_path):
    """MLX's own float16 ops can be further off than a kernel that accumulates in float32: the self-test's answer
    is the built-in on the sample upcast, so an exact float16 kernel passes and one 1% off fails."""
    for kernel_error, passes in ((1.0, True), (1.01, False)):
        d, kernel, _, notes = make(tmp_path / str(kernel_error), mode="on")
        entry = d.entries["double"]
        sloppy = lambda x: entry.builtin(x) * (1.01 if x.dtype == mx.float16 else 1)  # noqa: E731
        d.entries["double"] = entry._replace(builtin=sloppy)
        d.runner = lambda launch: [kernel(launch)[0] * kernel_error]
        d.call("double", (X.astype(mx.float16),))
        assert d.verdicts()[0]["selftest"] == ("pass" if passes else "fail") and len(notes) == (0 if passes else 1)
