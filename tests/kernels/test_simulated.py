"""Under simulated Metal (`metal_kernels.testing.simulate_metal`), no failure mode of a kernel changes a generated
token or raises: a kernel that fails to build, whose outputs fail at evaluation, that returns wrong numbers, or
that is slower than MLX's built-in op gives the tokens of kernels off, with one notice per failing variant.
Each case runs greedy decoding on a quantized dense model (the fused SwiGLU matvec), an MLA model on the paged
cache (paged MLA) and a paged batch of three prompts (paged attention, SwiGLU over several rows)."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import metal_kernels
from metal_kernels import emulator, reference
from metal_kernels.testing import DEVICE, emulator_runner, simulate_metal
from metal_kernels.verdicts import file_name
from mlxmodels.batch import generate_batch
from mlxmodels.config import HFConfig
from mlxmodels.decoder import Decoder
from mlxmodels.families import get_adapter
from mlxmodels.generate import generate_step
from mlxmodels.parts import compiled
from tests.test_batch import MODELS

needs_emulator = pytest.mark.skipif(not emulator.available(), reason="the Metal emulator needs Linux and g++")


# -- runners: how a kernel can go wrong on a Mac


def raises_at_build(launch):
    raise RuntimeError(f"[metal_kernel] Unable to build {launch.kernel.name}: program_source:1:2: error")


def fails_at_eval(launch):
    """Outputs that build fine and raise only when evaluated (a Metal command buffer error)."""
    poison = mx.linalg.inv(mx.zeros((2, 2)), stream=mx.cpu)[0, 0]  # singular: LU fails at eval
    return [mx.zeros(s, d) + poison.astype(d) for s, d in zip(launch.output_shapes, launch.output_dtypes)]


def wrong_numbers(launch):
    return [mx.full(s, 7.0, d) for s, d in zip(launch.output_shapes, launch.output_dtypes)]


RUNNERS = {"raises at build": raises_at_build, "fails at eval": fails_at_eval, "wrong numbers": wrong_numbers,
           "slower (the emulator)": emulator_runner}


class Counting:
    def __init__(self, runner):
        self.runner, self.kernels = runner, []

    def __call__(self, launch):
        self.kernels.append(launch.kernel.name)
        return self.runner(launch)


# -- what generates


def build(model_type: str, quantized: bool) -> Decoder:
    mx.random.seed(0)
    model = Decoder(get_adapter(model_type).spec(HFConfig(dict(MODELS[model_type], model_type=model_type))))
    if quantized:  # every linear layer (its input a multiple of the group): the fused SwiGLU path runs
        nn.quantize(model, group_size=64, bits=4, class_predicate=lambda _, m: isinstance(m, nn.Linear))
    return model


PROMPT = [3, 17, 42, 5, 99]


def dense():
    model = build("mistral", quantized=True)
    return [t for t, _ in generate_step(model, PROMPT, model.make_cache(), max_tokens=6)]


def mla():
    model = build("deepseek_v3", quantized=False)
    cache = model.make_cache(paged=True, num_blocks=16, block_size=4)
    return [t for t, _ in generate_step(model, PROMPT, cache, max_tokens=6)]


def batch():
    model = build("mistral", quantized=True)
    return generate_batch(model, [PROMPT, PROMPT[:2], [7] * 9], max_tokens=5, num_blocks=32, block_size=4, max_batch=3)


# what generates -> the entry points it must meet
SCENARIOS = {"dense": (dense, {"qmv_swiglu"}), "mla": (mla, {"paged_mla"}),
             "batch": (batch, {"qmv_swiglu", "paged_attention"})}


@pytest.fixture(scope="module")
def kernels_off():
    return {name: run() for name, (run, _) in SCENARIOS.items()}  # no Metal GPU here: the built-in ops


def notices(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("mlxmodels: ")]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("how", sorted(RUNNERS))
def test_no_kernel_failure_changes_a_token(how, scenario, kernels_off, capsys, monkeypatch):
    if RUNNERS[how] is emulator_runner and not emulator.available():
        pytest.skip("the Metal emulator needs Linux and g++")
    monkeypatch.delenv("MLXMODELS_KERNELS", raising=False)
    run, entries = SCENARIOS[scenario]
    runner = Counting(RUNNERS[how])
    capsys.readouterr()
    with simulate_metal(runner) as dispatch:
        tokens = run()
    assert tokens == kernels_off[scenario]
    verdicts = dispatch.verdicts()
    assert {v["entry"] for v in verdicts} == entries and runner.kernels, "every kernel self-tested"
    failing = {v["variant"] for v in verdicts if v["selftest"] == "fail"}
    said = notices(capsys)
    if RUNNERS[how] is emulator_runner:
        assert not failing and not said
        assert all(v["pick"] == "builtin" and v["kernel_us"] > v["builtin_us"] for v in verdicts)
    else:
        assert failing == {v["variant"] for v in verdicts}
        assert len(said) == len(failing)
        assert all(sum(f" {v} " in line for line in said) == 1 for v in failing), "one notice per failing variant"
        assert all(f"on {DEVICE} (" in line and "MLXMODELS_KERNELS=off" in line for line in said)


@needs_emulator
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_kernels_that_pass_run_in_generation_with_the_same_tokens(scenario, kernels_off, capsys, monkeypatch):
    """Mode on (no timing): the emulated kernels carry every decode step; eager, since the emulator needs
    concrete inputs."""
    monkeypatch.setattr(compiled, "ENABLED", False)
    run, entries = SCENARIOS[scenario]
    runner = Counting(emulator_runner)
    capsys.readouterr()
    with simulate_metal(runner, mode="on") as dispatch:
        tokens = run()
    assert tokens == kernels_off[scenario] and not notices(capsys)
    assert {v["entry"] for v in dispatch.verdicts()} == entries
    assert all(v["selftest"] == "pass" and v["pick"] == "kernel" for v in dispatch.verdicts())
    assert len(runner.kernels) > 2 * len(dispatch.verdicts()), "the real calls, not only the self-tests"


# -- the dispatch's promises, on the real entry points


def quantized_case(dtype=mx.float32):
    rng = np.random.default_rng(0)
    w, s, b = mx.quantize(mx.array(rng.standard_normal((40, 256)).astype(np.float32)), group_size=64, bits=4)
    x = mx.array(rng.standard_normal((2, 256)).astype(np.float32)).astype(dtype)
    return x, w, s, b


def test_a_remembered_verdict_is_not_tested_again(tmp_path, capsys):
    x, w, s, b = quantized_case()
    for expect_launches, expect_notices in ((1, 1), (0, 0)):  # a second process with the same cache
        runner = Counting(wrong_numbers)
        with simulate_metal(runner, cache_dir=tmp_path):
            np.testing.assert_array_equal(np.array(metal_kernels.qmv(x, w, s, b)), np.array(reference.qmv(x, w, s, b)))
        assert len(runner.kernels) == expect_launches and len(notices(capsys)) == expect_notices


def test_deciding_leaves_the_global_random_state_alone(tmp_path, capsys):
    x, w, s, b = quantized_case()
    mx.random.seed(7)
    want = mx.random.normal((4,))
    mx.random.seed(7)
    with simulate_metal(Counting(wrong_numbers), cache_dir=tmp_path):
        metal_kernels.qmv(x, w, s, b)  # a self-test draws its sample inputs
    np.testing.assert_array_equal(np.array(mx.random.normal((4,))), np.array(want))
    assert len(notices(capsys)) == 1


def test_a_corrupted_cache_file_is_ignored(tmp_path, capsys):
    path = tmp_path / file_name(mx.__version__, DEVICE)
    path.write_text('{"format": 1, "selftests": [{"pass": true}], "timings": 7')
    x, w, s, b = quantized_case()
    runner = Counting(raises_at_build)
    with simulate_metal(runner, cache_dir=tmp_path):
        metal_kernels.qmv(x, w, s, b)
    assert runner.kernels == ["qmv"] and len(notices(capsys)) == 1
    assert [v["pass"] for v in json.loads(path.read_text())["selftests"]] == [False]


def test_mode_off_never_launches():
    from tests.kernels.test_dispatch import dispatch_cases

    runner = Counting(raises_at_build)
    with simulate_metal(runner, mode="off"):
        for got, want in dispatch_cases():
            np.testing.assert_array_equal(np.array(got), np.array(want))
    assert runner.kernels == []


@needs_emulator
def test_mode_on_self_tests_and_skips_the_timing():
    x, w, s, b = quantized_case()
    runner = Counting(emulator_runner)
    with simulate_metal(runner, mode="on") as dispatch:
        got = metal_kernels.qmv(x, w, s, b)
    np.testing.assert_allclose(np.array(got), np.array(reference.qmv(x, w, s, b)), rtol=1e-5, atol=1e-4)
    assert runner.kernels == ["qmv", "qmv"], "the self-test, then the call"
    [v] = dispatch.verdicts()
    assert v["kernel_us"] is None and v["pick"] == "kernel"


def test_a_dtype_mix_mlx_accepts_runs_the_builtin(capsys):
    x, w, s, b = quantized_case(mx.float16)  # x float16, scales and biases float32
    runner = Counting(raises_at_build)
    with simulate_metal(runner):
        got = metal_kernels.qmv(x, w, s, b)
    want = mx.quantized_matmul(x, w, s, b, transpose=True, group_size=64, bits=4)
    np.testing.assert_array_equal(np.array(got), np.array(want))
    assert runner.kernels == [] and not notices(capsys)


@pytest.mark.parametrize("how", ["fails at eval", "raises at build"])
def test_a_compiled_caller_gets_the_builtin_after_a_failing_self_test(how, capsys):
    x, w, s, b = quantized_case()
    runner = Counting(RUNNERS[how])
    with simulate_metal(runner):
        f = mx.compile(lambda x: metal_kernels.qmv_swiglu(x, (w, s, b), (w, s, b)) * 2)
        for _ in range(2):
            got = f(x)
            mx.eval(got)
    want = reference.qmv_swiglu(x, (w, s, b), (w, s, b)) * 2
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-6)
    assert runner.kernels == ["qmv_swiglu"] and len(notices(capsys)) == 1
