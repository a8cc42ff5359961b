"""parallel="auto"'s choice per family (real configs of the models this is for), the memory check's arithmetic, and
the watchdog, in one process."""

import threading
from pathlib import Path

import mlx.core as mx
import pytest

from mlxmodels.config import read_config
from mlxmodels.distributed import Layout, ParallelError, Slice
from mlxmodels.distributed.auto import candidates, choose
from mlxmodels.distributed.memory import check_share, parse_bytes, rank_memory, share_bytes
from mlxmodels.distributed.watchdog import Watchdog, timeout_from_env
from mlxmodels.families import build_spec
from tests.distributed.groups import Group

CONFIGS = Path(__file__).resolve().parents[1] / "data" / "configs"
GB = 10 ** 9


def spec_of(name):
    cfg = read_config(CONFIGS / name)
    return build_spec(cfg, str(CONFIGS / name / "config.json"))[1]


@pytest.mark.parametrize("name, ranks, memory, total, mode", [
    ("DeepSeek-V3", 8, 512, 380, "experts"),  # 256 experts over 8 Macs
    ("Kimi-K2-Instruct", 3, 512, 570, "experts"),  # 384 experts divide by 3 where its 64 heads do not
    ("Qwen3-30B-A3B", 2, 64, 17, "experts"),
    ("Mixtral-8x7B-v0.1", 16, 64, 26, "tensor"),  # 8 experts do not divide over 16; 32 heads do
    ("Llama-4-Maverick-17B-128E-Instruct", 3, 192, 220, "pipeline"),  # 128 experts and 40 heads: neither by 3
    ("Llama-3.1-8B-Instruct", 2, 64, 16, "tensor"),
    ("Llama-3.1-8B-Instruct", 3, 64, 16, "pipeline"),  # 32 heads over 3
    ("gemma-3-27b-it", 2, 16, 54, "pipeline"),  # equal halves of 54 GB do not fit 16 GB ranks
])
def test_auto_chooses_per_family(name, ranks, memory, total, mode):
    order = candidates(spec_of(name), ranks, [memory * GB] * ranks, total * GB)
    assert order[0][0] == mode and order[-1][0] == "pipeline"


def test_auto_without_known_memory_still_prefers_experts_then_tensor():
    assert [m for m, _ in candidates(spec_of("Qwen3-30B-A3B"), 2, None, 17 * GB)] == ["experts", "tensor", "pipeline"]


def test_uneven_memory_leaves_tensor_out_where_the_smallest_rank_cannot_hold_half():
    order = candidates(spec_of("Llama-3.1-8B-Instruct"), 2, [8 * GB, 64 * GB], 16 * GB + 1)
    assert [m for m, _ in order] == ["pipeline"] and "do not fit every rank" in order[0][1]


class Refuses(Layout):
    def __init__(self, spec, group, budgets=None):
        raise ParallelError("intermediate 1408 does not divide into 2 x 64-wide quantization groups")


class Accepts(Layout):
    pass


@pytest.mark.parametrize("rank, said", [(0, 1), (1, 0)])
def test_a_mode_whose_layout_refuses_falls_through_and_rank_0_says_why(rank, said):
    lines = []
    modes = {"experts": Refuses, "tensor": Accepts, "pipeline": Accepts}
    layout = choose(spec_of("Qwen3-30B-A3B"), Group(rank, 2), None, 17 * GB, modes=modes, say=lines.append)
    assert type(layout) is Accepts and len(lines) == said
    if said:
        assert lines[0].startswith("mlxm: --parallel auto chose tensor (") and "experts does not apply" in lines[0]


def test_when_pipeline_refuses_too_its_error_is_the_one_raised():
    modes = {"experts": Refuses, "tensor": Refuses, "pipeline": Refuses}
    with pytest.raises(ParallelError, match="intermediate 1408"):
        choose(spec_of("Qwen3-30B-A3B"), Group(0, 2), None, 17 * GB, modes=modes, say=print)


class Halves(Layout):
    """Cuts every weight in half along axis 0 and keeps nothing else."""

    def place(self, name, shape):
        return (name, Slice.part(0, self.rank, self.size)) if name.endswith("weight") else None


def test_share_bytes_count_the_placed_parts_as_stored():
    mapped = {"a.weight": mx.zeros((8, 4), mx.bfloat16), "b.weight": mx.zeros((6,), mx.float32),
              "a.bias": mx.zeros((8,), mx.float32)}
    assert share_bytes(Halves(None, Group(1, 2)), mapped) == 8 * 4 * 2 // 2 + 6 * 4 // 2


def test_a_share_larger_than_the_rank_may_hold_is_one_line():
    group = mx.distributed.init()  # a group of one: the all_gathers pass through
    mapped = {"a.weight": mx.zeros((1000, 1000), mx.float32)}
    check_share(Halves(None, group), mapped, [4 * 10 ** 6])
    with pytest.raises(ParallelError, match=r"^rank 0 needs 4.00 MB for its share .* may hold 3.00 MB; use more"):
        check_share(Halves(None, group), mapped, [3 * 10 ** 6])


@pytest.mark.parametrize("text, value", [("64GB", 64 * GB), ("1.5 TB", 15 * 10 ** 11), ("512", 512), ("2g", 2 * GB)])
def test_rank_memory_from_the_environment(text, value):
    assert parse_bytes(text) == value and rank_memory({"MLXM_RANK_MEMORY": text}) == value


@pytest.mark.parametrize("text", ["lots", "-3GB", "0", "12PB"])
def test_a_bad_rank_memory_is_one_line(text):
    with pytest.raises(ValueError, match="MLXM_RANK_MEMORY=.* is not a size") as e:
        parse_bytes(text)
    assert not isinstance(e.value, ParallelError)  # a follower says its own mistake (rank 0 cannot know it)


def test_rank_memory_defaults_to_what_the_machine_has():
    assert rank_memory({}) > 10 ** 8


def test_the_timeout_from_the_environment():
    assert timeout_from_env({}) == 120 and timeout_from_env({"MLXM_PARALLEL_TIMEOUT": "2.5"}) == 2.5
    with pytest.raises(ValueError, match="MLXM_PARALLEL_TIMEOUT='0' is not a number of seconds"):
        timeout_from_env({"MLXM_PARALLEL_TIMEOUT": "0"})


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def test_the_watchdog_fires_only_armed_and_past_its_timeout_since_the_last_pet():
    clock, fired = Clock(), threading.Event()
    dog = Watchdog(0.04, fired.set, clock)  # polls every 10 ms of real time; counts in the fake clock's time
    dog.arm()
    clock.now = 0.03
    assert not fired.wait(0.2)  # within the timeout
    dog.pet()
    clock.now = 0.06
    assert not fired.wait(0.2)  # 0.03 since the pet
    dog.disarm()
    clock.now = 10.0
    assert not fired.wait(0.2)  # disarmed: waiting on a person, not on a rank
    dog.arm()
    clock.now = 10.05
    assert fired.wait(5.0)
    dog.close()

