"""The address-space check: clang compiles the generated source a second time with `device`, `constant`,
`threadgroup` and `thread` as distinct address spaces, so a pointer handed across them fails as on Metal."""

import mlx.core as mx
import pytest

from metal_kernels import emulator
from tests.kernels.conftest import real_launches, test_launch

pytestmark = pytest.mark.skipif(emulator.clang() is None,
                                reason="clang is not installed, so the address-space check cannot run "
                                       "(Debian: apt-get install clang)")

FIRST = "inline uint32_t first(const device uint32_t* w) {\n  return w[0];\n}\n"
ANY_SPACE = "template <typename W>\ninline uint32_t first(W w) {\n  return w[0];\n}\n"
CALL = "  uint t = thread_position_in_grid.x;\n  out[t] = float(first(in0 + t % 4));\n"


def words(n: int) -> mx.array:
    return mx.arange(n).astype(mx.uint32)


def test_device_pointer_helper_given_a_constant_input_is_refused():
    """MLX passes an input of fewer than 8 elements as `constant`: a `const device` parameter cannot take it."""
    small = test_launch(CALL, [words(4)], FIRST)
    assert "const constant uint32_t* in0" in emulator.write_source(small)
    with pytest.raises(emulator.AddressSpaceError, match="call to 'first'(.|\n)*address space 'constant' as a pointer to address space 'device'"):
        emulator.check_spaces(small)
    with pytest.raises(emulator.AddressSpaceError):
        emulator.run(small, ["forward"])  # run checks before it compiles
    emulator.check_spaces(test_launch(CALL, [words(8)], FIRST))  # 8 elements: device memory, accepted
    emulator.check_spaces(test_launch(CALL, [words(4)], ANY_SPACE))  # the fix: a helper for either space


def test_threadgroup_arrays_are_threadgroup_memory():
    header = "inline float total(const device float* p) {\n  return p[0] + p[1];\n}\n"
    body = ("  uint t = thread_index_in_threadgroup;\n  threadgroup float buf[64];\n  buf[t] = 1.0f;\n"
            "  threadgroup_barrier(mem_flags::mem_threadgroup);\n  out[t] = total({});\n")
    with pytest.raises(emulator.AddressSpaceError, match=r"call to 'total'(.|\n)*'threadgroup float\[64\]' to 'device float const \*'"):
        emulator.check_spaces(test_launch(body.format("buf"), header=header))
    good = header.replace("const device float*", "const threadgroup float*")
    emulator.check_spaces(test_launch(body.format("buf"), header=good))
    emulator.check_spaces(test_launch(body.format("&buf[t % 2]"), header=good))


def test_a_thread_pointer_is_not_a_device_pointer():
    header = "inline void put(device float* o, thread const float* x) {\n  o[0] = x[0];\n}\n"
    ok = "  float x[2] = {1.0f, 2.0f};\n  put(out + thread_position_in_grid.x, x);\n"
    emulator.check_spaces(test_launch(ok, header=header))
    with pytest.raises(emulator.AddressSpaceError, match=r"call to 'put'(.|\n)*'float\[2\]' to 'device float \*'"):
        emulator.check_spaces(test_launch(ok.replace("out + thread_position_in_grid.x, x", "x, x"), header=header))


@pytest.mark.parametrize("name", sorted(real_launches()))
def test_real_kernels_pass_the_address_space_check(name):
    emulator.check_spaces(real_launches()[name])
