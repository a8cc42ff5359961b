"""Bytes per token per mode: the ring costs, the figures computed from a spec, the counting hook, and (one 2-rank
launch) the bytes counted through the backend equal to the computed ones in every mode."""

from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest

from mlxmodels.config import read_config
from mlxmodels.distributed.traffic import Traffic, computed, counted, ring_bytes
from mlxmodels.families import build_spec

CONFIGS = Path(__file__).resolve().parents[1] / "data" / "configs"


def spec_of(name):
    folder = CONFIGS / name
    return build_spec(read_config(folder), str(folder / "config.json"))[1]


@pytest.mark.parametrize("ranks", [2, 3, 4, 8])
def test_ring_costs_match_reduce_scatter_then_all_gather(ranks):
    s = 1200
    chunk = s / ranks
    # reduce-scatter and all-gather each pass (N-1) chunks of s/N from every rank
    assert ring_bytes("all_sum", s, ranks) == pytest.approx(2 * (ranks - 1) * chunk)
    assert ring_bytes("sum_scatter", s, ranks) == pytest.approx((ranks - 1) * chunk)
    # all_gather of s bytes per rank: each rank forwards every other rank's s once
    assert ring_bytes("all_gather", s, ranks) == (ranks - 1) * s
    assert ring_bytes("send", s, ranks) == s
    with pytest.raises(ValueError, match="recv"):
        ring_bytes("recv", s, ranks)


@pytest.mark.parametrize("name", ["DeepSeek-V3", "Llama-3.1-8B-Instruct", "Mixtral-8x7B-v0.1"])
def test_tensor_and_experts_send_two_hidden_all_sums_per_layer(name):
    spec = spec_of(name)
    d, v, n = spec.hidden_size * 2, spec.vocab_size * 2, 2
    for mode in ("tensor", "experts"):
        t = computed(spec, mode, n)
        assert t.per_layer == 2 * n * ring_bytes("all_sum", d, n)
        assert t.ends == n * ring_bytes("all_sum", d, n) + n * ring_bytes("all_gather", v / n, n)
        assert t.total == t.per_layer * len(spec.layers) + t.ends
        assert t.cuts == 0


def test_pipeline_sends_the_hidden_state_per_cut_then_shares_the_last_hidden_state_and_logits():
    spec = spec_of("DeepSeek-V3")
    for n in (2, 4):
        t = computed(spec, "pipeline", n, itemsize=4)
        d, v = spec.hidden_size * 4, spec.vocab_size * 4
        assert t.per_layer == 0
        assert t.cuts == (n - 1) * d
        assert t.ends == n * ring_bytes("all_sum", d, n) + n * ring_bytes("all_sum", v, n)
        assert t.ends == pytest.approx(2 * (n - 1) * (d + v))
        assert t.per_layer_average == pytest.approx(t.total / 61)


def test_pipeline_moves_far_less_than_tensor_on_a_deep_model():
    """Per token, tensor mode moves two hidden states per layer (61 layers); pipeline one per cut, then the logits."""
    spec = spec_of("DeepSeek-V3")
    assert computed(spec, "tensor", 2).total > 5 * computed(spec, "pipeline", 2).total


def test_one_rank_sends_nothing_and_an_unknown_mode_is_refused():
    spec = spec_of("Llama-3.2-1B-Instruct")
    assert computed(spec, "tensor", 1) == Traffic("tensor", 1, 16, 0, 0, 0)
    with pytest.raises(ValueError, match="rows"):
        computed(spec, "rows", 2)


class Group:
    def __init__(self, size):
        self._size = size

    def size(self):
        return self._size


def test_counting_adds_ring_bytes_per_call_and_restores_the_functions():
    calls = []
    fake = SimpleNamespace(all_sum=lambda x, group=None: calls.append("sum") or x * 2,
                           all_gather=lambda x, group=None: mx.concatenate([x, x]),
                           send=lambda x, dst, group=None: x)
    originals = dict(vars(fake))
    g = Group(4)
    x = mx.ones((3, 16), dtype=mx.float16)  # 96 bytes
    with counted(fake) as count:
        y = fake.all_sum(x, group=g)
        fake.all_gather(x, group=g)
        fake.send(x, 1, group=g)
        fake.send(x, 1, group=g)
    assert np.array_equal(np.array(y), np.full((3, 16), 2, dtype=np.float16)) and calls == ["sum"]
    assert dict(count.calls) == {"all_sum": 1, "all_gather": 1, "send": 2}
    assert count.sent["all_sum"] == pytest.approx(2 * 3 / 4 * 96)
    assert count.sent["all_gather"] == 3 * 96
    assert count.sent["send"] == 2 * 96
    assert count.total == pytest.approx(144 + 288 + 192)
    assert vars(fake) == originals


def test_counting_sees_mlx_collectives_a_module_calls_and_leaves_results_alone():
    """A part given mx.distributed.all_sum while counting runs is counted; the wrapper returns MLX's result."""
    before = mx.distributed.all_sum
    x = mx.arange(12, dtype=mx.float32).reshape(3, 4)
    with counted() as count:
        reduce = mx.distributed.all_sum  # as a Layout hands its modules a collaborator at build time
        y = reduce(x)
        mx.eval(y)
        count.reset()
        reduce(x[:1])
    assert mx.distributed.all_sum is before
    assert np.array_equal(np.array(y), np.array(x))  # one rank: the sum is the input
    assert dict(count.calls) == {"all_sum": 1}
    assert count.total == 0  # a one-rank group sends nothing


# ---------------------------------------------------------------- counted over 2 ranks == computed

LAUNCHED = {"llama3/tensor": "llama3", "qwen3_moe/tensor": "qwen3_moe", "qwen3_moe/experts": "qwen3_moe",
            "deepseek_v3/experts": "deepseek_v3", "llama3/pipeline": "llama3", "deepseek_v3/pipeline": "deepseek_v3"}


@pytest.fixture(scope="module")
def counted_on_two_ranks(tmp_path_factory):
    """One mlx.launch: every (case, mode) of LAUNCHED, each rank's bytes sent per token."""
    from tests.distributed import traffic_worker
    from tests.distributed.harness import launch, rank_results
    from tests.families.test_families import CASES
    from tests.oracle import build_hf

    root = tmp_path_factory.mktemp("traffic")
    folders = {}
    for case in set(LAUNCHED.values()):
        model_type, config, _ = CASES[case]
        build_hf(model_type, root / case, **config)
        folders[case] = root / case
    args = [f"{key}={folders[case]}" for key, case in LAUNCHED.items()]
    proc = launch([traffic_worker.__file__, *args], root / "out", timeout=240)
    return folders, rank_results(root / "out", proc)


@pytest.mark.parametrize("key", sorted(LAUNCHED))
def test_the_bytes_counted_through_the_backend_equal_the_computed_ones(counted_on_two_ranks, key):
    folders, ranks = counted_on_two_ranks
    folder = folders[LAUNCHED[key]]
    spec = build_spec(read_config(folder), str(folder / "config.json"))[1]
    want = computed(spec, key.split("/")[1], 2, itemsize=4).total  # float32 activations
    for phase in ("prefill", "decode"):
        got = sum(r[key][phase] for r in ranks)
        assert got == pytest.approx(want), f"{key} {phase}: counted {got} bytes per token, computed {want}"
    if key.endswith("/pipeline"):  # rank 0 sends across the cut; both share the last hidden state, then the logits
        assert [r[key]["calls"] for r in ranks] == [{"send": 1, "all_sum": 2}, {"all_sum": 2}]
    else:  # two per layer, one for the embedding; the logits gathered
        assert ranks[0][key]["calls"] == {"all_sum": 2 * len(spec.layers) + 1, "all_gather": 1}
