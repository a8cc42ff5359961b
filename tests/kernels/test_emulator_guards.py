"""Guard zones: every buffer and threadgroup array lies between unmapped pages (the data against the one after it
in even runs, the one before it in odd runs), and threadgroup arrays are bounds-checked per element, so reading or
writing one element outside fails the run with a message naming the buffer or array."""

import mlx.core as mx
import numpy as np
import pytest

from metal_kernels import emulator
from tests.kernels.conftest import test_launch

pytestmark = pytest.mark.skipif(not emulator.available(), reason="the Metal emulator needs Linux and g++")

IN = [mx.arange(64).astype(mx.float32)]
T = "  int t = int(thread_position_in_grid.x);\n"


def assert_fails(body, message, inputs=IN):
    with pytest.raises(emulator.EmulatorError, match=message):
        emulator.run(test_launch(T + body, inputs))


def passes(body, inputs=IN):
    return [np.array(r[0]) for r in emulator.run(test_launch(T + body, inputs))]


def test_reading_before_an_input_fails():
    assert_fails("  out[t] = in0[t - 1];", r"out-of-bounds read 4 bytes before the start of buffer 'in0' \(256 bytes\)")
    got = passes("  out[t] = in0[max(t - 1, 0)];")
    assert all((r == np.maximum(np.arange(64) - 1, 0)).all() for r in got)


def test_reading_past_an_input_fails():
    assert_fails("  out[t] = in0[t + 1];", r"out-of-bounds read 0 bytes past the end of buffer 'in0'")
    passes("  out[t] = in0[min(t + 1, 63)];")


def test_writing_outside_an_output_fails_on_either_side():
    assert_fails("  out[t - 1] = 1.0f;", r"out-of-bounds write 4 bytes before the start of buffer 'out'")
    assert_fails("  out[t + 1] = 1.0f;", r"out-of-bounds write 0 bytes past the end of buffer 'out'")
    passes("  out[t] = 1.0f;")


def test_threadgroup_array_elements_are_bounds_checked():
    body = ("  threadgroup float buf[4][16];\n  buf[t / 16][t % 16 + {}] = 1.0f;\n"
            "  threadgroup_barrier(mem_flags::mem_threadgroup);\n  out[t] = buf[t / 16][t % 16];\n")
    assert_fails(body.format(1), r"out-of-bounds access to threadgroup array 'buf': element 64 of 64 \(line \d+\)")
    assert all((r == 1).all() for r in passes(body.format(0)))


def test_threadgroup_pointer_escapes_hit_the_guard_pages():
    body = ("  threadgroup float buf[64];\n  threadgroup float* p = buf;\n  p[t {}] = 1.0f;\n"
            "  threadgroup_barrier(mem_flags::mem_threadgroup);\n  out[t] = p[t];\n")
    assert_fails(body.format("+ 1"), r"out-of-bounds write 0 bytes past the end of threadgroup array 'buf'")
    assert_fails(body.format("- 1"), r"out-of-bounds write 4 bytes before the start of threadgroup array 'buf'")
    passes(body.format("+ 0"))
