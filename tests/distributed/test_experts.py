"""Experts mode: routed experts partitioned across ranks, the router whole, one all_sum per MoE layer.

In process: a layer's experts split in two LocalExperts give the whole layer's output (both ways of running a
rank's pairs), what each rank places, and the refusals. Over 2 ranks (one mlx.launch for the module): qwen3_moe,
mixtral, DeepSeek-V3 with MTP (MLA + shared experts) and a 4-bit qwen3_moe folder against the single-process model.
"""

import mlx.core as mx
import numpy as np
import pytest

import mlxmodels
from mlxmodels.distributed import ParallelError
from mlxmodels.distributed.experts import ExpertsLayout, LocalExperts
from mlxmodels.families import build_spec
from mlxmodels.config import read_config
from mlxmodels.parts.experts import SwitchMLP
from tests import mtp_fixture
from tests.distributed import experts_worker
from tests.distributed.compare import assert_ranks_match
from tests.distributed.groups import Group
from tests.distributed.harness import launch, rank_results
from tests.families.test_families import CASES
from tests.oracle import build_hf

TOL = 1e-4


def split_experts(whole: SwitchMLP, n_ranks: int) -> list:
    """Each rank's LocalExperts holding its slice of `whole`'s stacked weights."""
    E, inter, D = whole.gate_proj.weight.shape
    per = E // n_ranks
    parts = []
    for r in range(n_ranks):
        part = LocalExperts(D, inter, per, "silu", r * per)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            getattr(part, proj).weight = getattr(whole, proj).weight[r * per : (r + 1) * per]
        parts.append(part)
    return parts


@pytest.mark.parametrize("regroup", [False, True])
@pytest.mark.parametrize("per_expert_input", [False, True])
@pytest.mark.parametrize("tokens", [3, 40])
def test_the_ranks_experts_add_up_to_the_whole_layer(regroup, per_expert_input, tokens):
    mx.random.seed(0)
    E, D, inter, k = 8, 64, 32, 3
    whole = SwitchMLP(D, inter, E)
    x = mx.random.normal((tokens, k, D) if per_expert_input else (tokens, D))
    idx = mx.random.randint(0, E, (tokens, k))
    idx = mx.concatenate([idx[:, :1] * 0 + 7, idx[:, 1:]], axis=1) if tokens > 3 else idx  # one rank's heavy load
    want = whole(x, idx)  # (N, k, D)
    parts = split_experts(whole, 2)
    for part in parts:
        part.regroup = regroup
    got = sum(part(x, idx) for part in parts)
    assert np.abs(np.array(got - want)).max() < 1e-5


def test_a_rank_with_no_pair_of_a_step_gives_zeros():
    whole = SwitchMLP(16, 8, 4)
    part = split_experts(whole, 2)[1]  # experts 2, 3
    part.regroup = True
    y = part(mx.ones((5, 16)), mx.array([[0, 1]] * 5))
    assert y.shape == (5, 2, 16) and not np.any(np.array(y))


def layout_of(folder, rank, size):
    _, spec = build_spec(read_config(folder), str(folder / "config.json"))
    return ExpertsLayout(spec, Group(rank, size))


def test_each_rank_places_its_experts_and_its_part_of_the_shared_experts(tmp_path):
    build_hf("deepseek_v3", tmp_path, **CASES["deepseek_v3"][1])  # 8 experts of 32, one shared expert of 32
    layout = layout_of(tmp_path, 1, 2)
    p = "model.layers.1.mlp."

    def bounds(name, shape):
        local, cut = layout.place(p + name, shape)
        assert local == p + name
        return cut.bounds(shape, name)

    assert bounds("switch_mlp.up_proj.weight", (8, 32, 64)) == (0, 4, 8)  # experts 4..7, each whole
    assert bounds("switch_mlp.down_proj.weight", (8, 64, 4)) == (0, 4, 8)  # packed codes
    assert bounds("switch_mlp.down_proj.scales", (8, 64, 1)) == (0, 4, 8)
    assert bounds("shared_experts.gate_proj.weight", (32, 64)) == (0, 16, 32)  # intermediate rows
    assert bounds("shared_experts.down_proj.weight", (64, 32)) == (1, 16, 32)  # intermediate columns
    assert layout.place(p + "gate.weight", (8, 64)) == (p + "gate.weight", None)  # the router whole
    assert layout.local_spec.layers[1].ffn.shared_hidden == 16
    assert layout.local_spec.layers[1].ffn.n_experts == 8  # the router still scores every expert
    assert layout.local_spec.layers[1].ffn.hidden == 32  # each expert whole


@pytest.mark.parametrize("case, edit, size, match", [
    ("qwen3_moe", dict(num_experts=6), 4, "layer 0: 6 routed experts do not divide over 4 ranks"),  # heads do
    ("llama3", {}, 2, "has none; use --parallel tensor"),
])
def test_what_cannot_split_this_way_is_one_line(tmp_path, case, edit, size, match):
    model_type, config, _ = CASES[case]
    build_hf(model_type, tmp_path, **{**config, **edit})
    with pytest.raises(ParallelError, match=match):
        layout_of(tmp_path, 0, size)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from quantize.convert import Options, convert
    from quantize.recipes import Setting

    root = tmp_path_factory.mktemp("experts")
    out = []
    for case in ("qwen3_moe", "mixtral"):
        model_type, config, _ = CASES[case]
        build_hf(model_type, root / case, **config)
        out.append(root / case)
    out.append(mtp_fixture.build(root / "dsv3")[0])
    # groups of 32: attention's o_proj (64 inputs) must split into whole groups for tensor mode's heads
    convert(root / "qwen3_moe", root / "q4", Options(quantize=True, setting=Setting(group_size=32)))
    out.append(root / "q4")
    return out


@pytest.fixture(scope="module")
def ranks(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("experts-out")
    proc = launch([experts_worker.__file__, *folders], out, timeout=240)
    return rank_results(out, proc)


def test_two_ranks_give_the_single_process_model(folders, ranks):
    for i, folder in enumerate(folders):
        model, _ = mlxmodels.load(folder)
        want, arrays = experts_worker.run(model)
        assert_ranks_match(folder, i, ranks, want, arrays, TOL)
        for rank, got in enumerate(ranks):
            mine = got[str(folder)]
            # each rank holds half the routed experts' bytes (exactly: E divides)
            assert mine["expert_bytes"] * 2 == want["expert_bytes"], f"{folder.name} rank {rank}: expert bytes"
            # the rest split as in tensor mode; whole on every rank: norms, routers, MLA's latent projections, eh_proj
            assert mine["bytes"] <= 0.6 * want["bytes"], f"{folder.name} rank {rank}: {mine['bytes']} bytes"
        assert "speculative" in want or folder.name != "dsv3"


def placed_shapes(layout, mapped: dict) -> dict:
    """{local name: shape of the part placed here} for every tensor of the whole model (headers only)."""
    out = {}
    for name, a in mapped.items():
        placement = layout.place(name, tuple(a.shape))
        if placement is not None:
            local, cut = placement
            shape = list(a.shape)
            if cut is not None:
                axis, lo, hi = cut.bounds(tuple(a.shape), name)
                shape[axis] = hi - lo
            out[local] = tuple(shape)
    return out


@pytest.mark.parametrize("case", sorted(c for c, (_, config, _) in CASES.items()
                                        if any(k in config for k in ("num_experts", "num_local_experts",
                                                                     "n_routed_experts"))))
def test_every_moe_family_places_exactly_what_each_rank_builds(tmp_path, case):
    """Every rank's modules take exactly the parts placed there (names and shapes), in every MoE family:
    Llama 4's `feed_forward.experts`, Qwen2-MoE's gated shared expert, DeepSeek's MLA and shared experts."""
    from mlx.utils import tree_flatten

    from mlxmodels.formats.safetensors import Checkpoint
    from mlxmodels.load import build, placeholders

    model_type, config, _ = CASES[case]
    build_hf(model_type, tmp_path, **config)
    cfg = read_config(tmp_path)
    adapter, spec = build_spec(cfg, str(tmp_path / "config.json"))
    ckpt = Checkpoint(tmp_path)
    whole, mapped = build(tmp_path, cfg, adapter, spec, placeholders(ckpt))
    ckpt.close()
    experts = 0
    for rank in range(2):
        layout = ExpertsLayout(whole.spec, Group(rank, 2))
        built = {n: tuple(a.shape) for n, a in tree_flatten(layout.build().parameters())}
        assert placed_shapes(layout, mapped) == built
        experts += sum(1 for n in built if any(f".{e}." in n for e in ("switch_mlp", "experts")))
    assert experts > 0
