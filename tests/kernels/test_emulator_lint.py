"""The MSL lint: each construct Metal rejects (and g++ accepts) is refused before the emulator compiles, with its
line in the generated source; the real kernels have none."""

import pytest

from metal_kernels import emulator
from metal_kernels.launch import Launch
from tests.kernels.conftest import real_launches, test_launch

OK = "  uint t = thread_position_in_grid.x;\n  out[t] = 1.0f;\n"

# (planted line in the body, what the message must say)
PLANTED = [
    ("  double d = 1.0; out[t] = float(d);", "`double`"),
    ("  out[t] = std::max(1.0f, 2.0f);", "`std::`"),
    ("  float a = 1.0f; memcpy(&out[t], &a, 4);", "`memcpy`"),
    ("  static int calls = 0; out[t] = float(calls);", "`static` local"),
    ("  if (t > 1000) throw 1;", "`throw`"),
    ("  try { out[t] = 1.0f; } catch (...) {}", "`try`"),
    ("  float* p = new float[2]; out[t] = p[0];", "`new`"),
    ("  auto f = [&](float a) { return a; }; out[t] = f(1.0f);", "lambda"),
    ("  goto end; end: out[t] = 1.0f;", "`goto`"),
    ("  threadgroup float buf[4] = {0};", "cannot be initialized"),
]


def launch(body: str, header: str = "") -> Launch:
    return test_launch(body, header=header, out_shape=(32,), grid=(32, 1, 1), tg=(32, 1, 1))


@pytest.mark.parametrize("planted, what", PLANTED, ids=[w for _, w in PLANTED])
def test_planted_msl_violation_is_refused_with_its_line(planted, what):
    assert emulator.lint(emulator.write_source(launch(OK))) == []
    bad = launch(OK + planted + "\n")
    source = emulator.write_source(bad)
    line = source.splitlines().index(planted) + 1
    with pytest.raises(emulator.MetalRejects, match=f"generated.metal:{line}: .*{what[:20]}"):
        emulator.check_source(bad)


def test_recursion_is_refused_direct_and_mutual_but_not_an_overload():
    direct = "inline float f(float x, int n) {\n  return n ? f(x * 2.0f, n - 1) : x;\n}\n"
    mutual = "float g(int n);\ninline float h(int n) {\n  return n ? g(n - 1) : 0.0f;\n}\n" \
             "inline float g(int n) {\n  return h(n);\n}\n"
    overload = "inline float k(float x) { return x; }\ninline half k(half x) {\n  return half(k(float(x)));\n}\n"
    body = "  out[thread_position_in_grid.x] = {};"
    assert [f.line for f in emulator.lint(emulator.write_source(launch(body.format("f(1.0f, 2)"), direct)))] == [2]
    found = emulator.lint(emulator.write_source(launch(body.format("g(3)"), mutual)))
    assert len(found) == 1 and ("`g` -> `h` -> `g`" in found[0].message or "`h` -> `g` -> `h`" in found[0].message)
    assert emulator.lint(emulator.write_source(launch(body.format("float(k(half(1.0f)))"), overload))) == []


def test_comments_and_strings_are_not_code():
    body = OK + "  // a double here, std::max there, static and throw\n  /* memcpy(\n  goto */\n"
    assert emulator.lint(emulator.write_source(launch(body))) == []


def test_emulator_run_refuses_before_compiling():
    with pytest.raises(emulator.MetalRejects, match="`double`"):
        emulator.run(launch(OK + "  double d = 2.0;\n"), ["forward"])


@pytest.mark.parametrize("name", sorted(real_launches()))
def test_real_kernels_pass_the_lint(name):
    assert emulator.lint(emulator.write_source(real_launches()[name])) == []
