"""Threadgroup memory races: two threads touching one threadgroup element between barriers that order threadgroup
memory, one of them writing, fail the run naming the array, the element and both threads; the patterns our kernels
use (one lane writes, barrier, many read; each lane its own element) pass."""

import mlx.core as mx
import numpy as np
import pytest

from metal_kernels import emulator
from tests.kernels.conftest import test_launch

pytestmark = pytest.mark.skipif(not emulator.available(), reason="the Metal emulator needs Linux and g++")

T = "  uint t = thread_index_in_threadgroup;\n  threadgroup float buf[64];\n"


def assert_race(body, message=r"race on 'buf' element \d+: thread \d+ (reads|writes) it \(line \d+\) and thread \d+"):
    with pytest.raises(emulator.EmulatorError, match=message):
        emulator.run(test_launch(T + body), ["forward"])


def ok(body):
    return [np.array(r[0]) for r in emulator.run(test_launch(T + body))]


NEIGHBOUR = "  buf[t] = float(t);\n  {sync}\n  out[t] = buf[{read}];\n"
NEXT = "(t + 1) % 64"  # thread 31 reads what thread 32, in the other SIMD-group, wrote
NEXT_LANE = "(t & ~31u) | ((t + 1) & 31u)"  # the next lane of the same SIMD-group


@pytest.mark.parametrize("sync", ["", "threadgroup_barrier(mem_flags::mem_none);",
                                  "threadgroup_barrier(mem_flags::mem_device);"])
def test_a_barrier_without_mem_threadgroup_does_not_order_threadgroup_memory(sync):
    assert_race(NEIGHBOUR.format(sync=sync, read=NEXT))
    for r in ok(NEIGHBOUR.format(sync="threadgroup_barrier(mem_flags::mem_threadgroup);", read=NEXT)):
        np.testing.assert_array_equal(r, (np.arange(64) + 1) % 64)


def test_simd_functions_order_no_memory_and_a_simdgroup_barrier_only_its_own_lanes():
    assert_race(NEIGHBOUR.format(sync="float s = simd_sum(1.0f); (void)s;", read=NEXT_LANE))
    assert_race(NEIGHBOUR.format(sync="simdgroup_barrier(mem_flags::mem_none);", read=NEXT_LANE))
    assert_race(NEIGHBOUR.format(sync="simdgroup_barrier(mem_flags::mem_threadgroup);", read=NEXT))
    lanes = np.arange(64)
    for r in ok(NEIGHBOUR.format(sync="simdgroup_barrier(mem_flags::mem_threadgroup);", read=NEXT_LANE)):
        np.testing.assert_array_equal(r, (lanes & ~31) | ((lanes + 1) & 31))


def test_write_write_race():
    assert_race("  buf[0] = float(t);\n  threadgroup_barrier(mem_flags::mem_threadgroup);\n  out[t] = buf[0];\n",
         r"race on 'buf' element 0: thread \d+ writes it \(line \d+\) and thread \d+ writes it")


def test_reading_then_overwriting_without_a_barrier_races():
    body = ("  buf[t] = 1.0f;\n  threadgroup_barrier(mem_flags::mem_threadgroup);\n  float x = buf[(t + 1) % 64];\n"
            "  {sync}\n  buf[t] = x + 1.0f;\n  threadgroup_barrier(mem_flags::mem_threadgroup);\n  out[t] = buf[t];\n")
    assert_race(body.replace("{sync}", ""), r"thread \d+ reads it \(line \d+\) and thread \d+ writes it")
    assert all((r == 2).all() for r in ok(body.replace("{sync}", "threadgroup_barrier(mem_flags::mem_threadgroup);")))


def test_one_writer_then_many_readers_passes():
    body = ("  if (t == 0) {\n    buf[0] = 7.0f;\n  }\n  threadgroup_barrier(mem_flags::mem_threadgroup);\n"
            "  out[t] = buf[0] + buf[0];\n")
    assert all((r == 14).all() for r in ok(body))
