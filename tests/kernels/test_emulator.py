"""The emulator itself: it must expose what a GPU would get wrong (threadgroup races, barrier divergence,
deadlock, reads of unwritten memory, out-of-bounds access, writes to inputs) and compute what a GPU
computes (thread-position attributes on a ragged grid, SIMD-group functions on 32 lanes, half/bfloat rounding)."""

import mlx.core as mx
import numpy as np
import pytest

from metal_kernels import emulator
from metal_kernels.launch import KernelDef, Launch

pytestmark = pytest.mark.skipif(not emulator.available(), reason="the Metal emulator needs Linux and g++")


def launch(body, inputs=(), out_shape=(64,), out_dtype=mx.float32, grid=(64, 1, 1), tg=(64, 1, 1), template=(),
           init_value=None, names=None):
    names = names or tuple(f"in{i}" for i in range(len(inputs)))
    k = KernelDef("test_" + str(abs(hash(body)) % 10**8), "", names, ("out",))
    return Launch(k, list(inputs), list(template), grid, tg, [out_shape], [out_dtype], init_value, source=body)


def run(l, orders=emulator.ORDERS):
    return [np.array(r[0]) for r in emulator.run(l, orders)]


NEIGHBOUR = """
  uint t = thread_index_in_threadgroup;
  threadgroup float buf[64];
  buf[t] = float(t);
  {barrier}
  out[t] = buf[(t + 1) % 64];
"""


def test_a_missing_barrier_is_a_race():
    with pytest.raises(emulator.EmulatorError, match=r"race on 'buf' element \d+: thread \d+ (reads|writes) it"):
        run(launch(NEIGHBOUR.format(barrier="")), ["forward"])
    fixed = run(launch(NEIGHBOUR.format(barrier="threadgroup_barrier(mem_flags::mem_threadgroup);")))
    for r in fixed:
        np.testing.assert_array_equal(r, (np.arange(64) + 1) % 64)


def test_outputs_start_as_nan_unless_an_init_value_is_given():
    body = "  uint t = thread_position_in_grid.x;\n  if (t % 2 == 0) out[t] = 1.0f;"
    got = run(launch(body), ["reverse"])[0]
    assert np.isnan(got[1::2]).all() and (got[::2] == 1).all()
    assert (run(launch(body, init_value=5.0), ["forward"])[0][1::2] == 5).all()


@pytest.mark.parametrize("body, message", [
    ("  if (thread_index_in_threadgroup < 16) return;\n  threadgroup_barrier(mem_flags::mem_threadgroup);\n"
     "  out[thread_index_in_threadgroup] = 0.0f;", "exited"),
    ("  if (thread_index_in_threadgroup % 2) {\n    threadgroup_barrier(mem_flags::mem_threadgroup);\n  } else {\n"
     "    threadgroup_barrier(mem_flags::mem_threadgroup);\n  }", "different threadgroup_barrier"),
    ("  float x = 1.0f;\n  if (thread_index_in_simdgroup < 16) x = simd_sum(x);\n  out[thread_index_in_threadgroup] = x;",
     "deadlock"),
    ("  float x = thread_index_in_simdgroup % 2 ? simd_sum(1.0f) : simd_max(1.0f);", "SIMD-group divergence"),
    ("  while (true) { threadgroup_barrier(mem_flags::mem_none); }", "no result"),
])
def test_divergence_and_deadlock_are_reported(body, message):
    with pytest.raises(emulator.EmulatorError, match=message):
        emulator.run(launch(body), ["forward"], timeout=1)


def test_out_of_bounds_and_input_writes_are_reported():
    a = mx.arange(64).astype(mx.float32)
    body = "  uint t = thread_position_in_grid.x;\n  out[t] = in0[t + 1];"
    with pytest.raises(emulator.EmulatorError, match="past the end of buffer 'in0'"):
        emulator.run(launch(body, [a]), ["forward"])
    body = "  uint t = thread_position_in_grid.x;\n  ((device float*)in0)[t] = 0.0f;"
    with pytest.raises(emulator.EmulatorError, match="write to input buffer 'in0'"):
        emulator.run(launch(body, [a]), ["forward"])


ATTRS = ["thread_position_in_grid", "thread_position_in_threadgroup", "threadgroup_position_in_grid",
         "threads_per_threadgroup", "threadgroups_per_grid", "threads_per_grid"]


def test_thread_attributes_on_a_ragged_grid():
    """grid (37, 5, 2) in threadgroups of (16, 2, 1): edge threadgroups are partial, as Metal dispatches them."""
    grid, tg = (37, 5, 2), (16, 2, 1)
    n = grid[0] * grid[1] * grid[2]
    lines = ["  uint i = (thread_position_in_grid.z * 5 + thread_position_in_grid.y) * 37 + thread_position_in_grid.x;"]
    for j, a in enumerate(ATTRS):
        lines += [f"  out[(i * 9 + {j}) * 3 + {c}] = {a}.{'xyz'[c]};" for c in range(3)]
    lines += ["  out[(i * 9 + 6) * 3] = thread_index_in_threadgroup;",
              "  out[(i * 9 + 6) * 3 + 1] = simdgroup_index_in_threadgroup;",
              "  out[(i * 9 + 6) * 3 + 2] = thread_index_in_simdgroup;",
              "  out[(i * 9 + 7) * 3] = simdgroups_per_threadgroup;",
              "  out[(i * 9 + 7) * 3 + 1] = threads_per_simdgroup;",
              "  out[(i * 9 + 7) * 3 + 2] = thread_execution_width;"]
    got = run(launch("\n".join(lines), out_shape=(n * 27,), out_dtype=mx.int32, grid=grid, tg=tg,
                     init_value=0), ["shuffle"])[0].reshape(n, 9, 3)
    for z in range(2):
        for y in range(5):
            for x in range(37):
                i = (z * 5 + y) * 37 + x
                tgp = (x // 16, y // 2, z)
                dims = (min(16, 37 - tgp[0] * 16), min(2, 5 - tgp[1] * 2), 1)
                local = (x % 16, y % 2, 0)
                flat = local[0] + local[1] * dims[0]
                want = [(x, y, z), local, tgp, dims, (3, 3, 2), grid, (flat, flat // 32, flat % 32),
                        (-(-dims[0] * dims[1] // 32), 32, 32)]
                np.testing.assert_array_equal(got[i, :8], want, err_msg=f"thread {(x, y, z)}")


def test_simd_functions_on_32_lanes():
    ops = ["simd_sum(v)", "simd_max(v)", "simd_min(v)", "simd_shuffle(v, (lane * 7) % 32)", "simd_shuffle_down(v, 3)",
           "simd_shuffle_up(v, 5)", "simd_shuffle_xor(v, 6)", "simd_broadcast(v, 9)", "simd_broadcast_first(v)",
           "simd_prefix_inclusive_sum(v)", "simd_prefix_exclusive_sum(v)", "int(simd_any(v > 90))",
           "int(simd_all(v > 0))", "simd_or(v)", "simd_and(v)", "simd_xor(v)"]
    body = "  uint lane = thread_index_in_simdgroup;\n  uint t = thread_index_in_threadgroup;\n  int v = in0[t];\n"
    body += "\n".join(f"  out[t * {len(ops)} + {j}] = {op};" for j, op in enumerate(ops))
    vals = np.random.default_rng(0).integers(1, 100, 64).astype(np.int32)
    got = run(launch(body, [mx.array(vals)], out_shape=(64 * len(ops),), out_dtype=mx.int32))
    for r in got:
        r = r.reshape(64, len(ops))
        for s in range(2):
            v, lane = vals[32 * s: 32 * s + 32], np.arange(32)
            want = [np.full(32, v.sum()), np.full(32, v.max()), np.full(32, v.min()), v[(lane * 7) % 32],
                    np.where(lane + 3 < 32, v[np.minimum(lane + 3, 31)], v), np.where(lane >= 5, v[lane - 5], v),
                    v[lane ^ 6], np.full(32, v[9]), np.full(32, v[0]), np.cumsum(v), np.cumsum(v) - v,
                    np.full(32, int((v > 90).any())), np.full(32, 1), np.full(32, np.bitwise_or.reduce(v)),
                    np.full(32, np.bitwise_and.reduce(v)), np.full(32, np.bitwise_xor.reduce(v))]
            np.testing.assert_array_equal(r[32 * s: 32 * s + 32].T, np.array(want))


def test_half_arithmetic_rounds_each_operation():
    x = np.random.default_rng(1).standard_normal(64).astype(np.float16)
    body = "  uint t = thread_position_in_grid.x;\n  half a = in0[t];\n  half b = a * a + a;\n  out[t] = b / half(3.0f);"
    got = run(launch(body, [mx.array(x)], out_dtype=mx.float16), ["forward"])[0]
    want = ((x * x) + x) / np.float16(3)  # numpy rounds every float16 operation too
    np.testing.assert_array_equal(got, want)


def test_bfloat_conversion_rounds_to_nearest_even():
    base = np.random.default_rng(2).standard_normal(56).astype(np.float32)
    # ties between two bfloats (exactly halfway) and specials
    ties = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 2**-130, np.inf, -np.inf, 65504, 3.0e38], np.float32)
    x = np.concatenate([base, ties])
    body = "  uint t = thread_position_in_grid.x;\n  bfloat16_t b = bfloat16_t(in0[t]);\n  out[t] = b;"
    got = emulator.run(launch(body, [mx.array(x)], out_dtype=mx.bfloat16), ["forward"])[0][0]
    want = mx.array(x).astype(mx.bfloat16)
    np.testing.assert_array_equal(np.array(got.view(mx.uint16)), np.array(want.view(mx.uint16)))


def test_builds_are_cached_by_content():
    l = launch(NEIGHBOUR.format(barrier=""))
    first = emulator.runner(l)
    stamp = first.stat().st_mtime_ns
    assert emulator.runner(l) == first and first.stat().st_mtime_ns == stamp
    other = emulator.runner(launch(NEIGHBOUR.format(barrier="threadgroup_barrier(mem_flags::mem_threadgroup);")))
    assert other != first


def test_threadgroup_declarations_are_rewritten_in_place():
    src = "  threadgroup float a[4][NSG];\n  threadgroup int n;\n  threadgroup float* p = a[0];\n"
    out = emulator.rewrite_threadgroup(src)
    assert out.count("\n") == src.count("\n")
    assert 'mtl_tg<float, (4), (NSG)> a(1, "a");' in out and "auto& n = *static_cast<int*>" in out
    assert "auto& a = *(threadgroup float(*)[4][NSG])" in emulator.rewrite_threadgroup(src, spaces=True)
    assert "threadgroup float* p = a[0];" in out  # a pointer into threadgroup memory is left alone


def test_vector_types_and_math():
    x = np.random.default_rng(3).standard_normal(256).astype(np.float32)
    body = """
  uint t = thread_position_in_grid.x;
  float4 a = float4(in0[4 * t], in0[4 * t + 1], in0[4 * t + 2], in0[4 * t + 3]);
  half4 h = half4(a * 2.0f);
  float4 b = metal::exp(a) + float4(h) - 1.0f;
  uint3 p = uint3(t, t + 1, t + 2);
  out[t] = dot(a, b) + metal::max(a.x, a.w) + precise::tanh(a.y) + float(p.z) + fast::exp(a.z) - a[2];
"""
    got = run(launch(body, [mx.array(x)]), ["forward"])[0]
    a = x.reshape(64, 4)
    b = np.exp(a) + (a * 2).astype(np.float16).astype(np.float32) - 1
    want = (a * b).sum(1) + np.maximum(a[:, 0], a[:, 3]) + np.tanh(a[:, 1]) + np.arange(64) + 2 + np.exp(a[:, 2]) - a[:, 2]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
