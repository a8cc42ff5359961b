"""Pipeline mode: contiguous layer ranges per rank, the hidden state sent rank to rank, the head where its weight is.

In process: how budgets size the ranges, what each rank places, the refusals, and one rank holding the whole
pipeline. Over 2 ranks (one mlx.launch for the module): llama3 (GQA), gemma3 (sliding windows of 8 across the
cut, tied head on rank 0), qwen3_moe, mixtral, DeepSeek-V3 with MTP (MLA + MoE, speculative MTP decoding) and a
4-bit llama3 folder against the single-process model; gemma3 again with budgets of 1 and 3 GiB.
"""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlxmodels
from mlxmodels.config import read_config
from mlxmodels.distributed import ParallelError
from mlxmodels.distributed.load import load_parallel
from mlxmodels.distributed.pipeline import PipelineLayout, layer_ranges
from mlxmodels.families import build_spec
from tests import mtp_fixture
from tests.distributed import pipeline_worker
from tests.distributed.groups import Group
from tests.distributed.harness import launch, rank_results
from tests.families.test_families import CASES
from tests.oracle import build_hf

TOL = 1e-4
UNEVEN = [2**30, 3 * 2**30]  # bytes each rank may hold: 1 GiB and 3 GiB


def layout_of(folder, rank, size, budgets=None):
    _, spec = build_spec(read_config(folder), str(folder / "config.json"))
    return PipelineLayout(spec, Group(rank, size), budgets)


@pytest.mark.parametrize("sizes, first, last, budgets, want", [
    ([1] * 6, 0, 0, [1, 1], [(0, 3), (3, 6)]),
    ([1] * 6, 0, 0, [1, 2], [(0, 2), (2, 6)]),
    ([1] * 6, 0, 0, [5, 1], [(0, 5), (5, 6)]),
    ([1] * 6, 0, 0, [0.5, 1.0], [(0, 2), (2, 6)]),  # every rank at least one layer, however small its budget
    ([1] * 6, 2, 0, [1, 1], [(0, 2), (2, 6)]),  # the embedding counts on rank 0
    ([1] * 6, 0, 2, [1, 1], [(0, 4), (4, 6)]),  # the head and MTP modules on the last rank
    ([1, 1, 4, 1, 1], 0, 0, [1, 1, 1], [(0, 2), (2, 3), (3, 5)]),
    ([1] * 4, 0, 0, [1] * 4, [(0, 1), (1, 2), (2, 3), (3, 4)]),
])
def test_budgets_size_contiguous_ranges(sizes, first, last, budgets, want):
    assert layer_ranges(sizes, first, last, budgets) == want


def test_each_rank_places_its_layers_renumbered_and_the_ends_where_they_run(tmp_path):
    folder = mtp_fixture.build(tmp_path / "dsv3")[0]  # 2 layers and one MTP module (stored as layer 2)
    first, last = layout_of(folder, 0, 2), layout_of(folder, 1, 2)
    assert (first.start, first.stop, last.start, last.stop) == (0, 1, 1, 2)
    name = "model.layers.1.self_attn.kv_a_proj_with_mqa.weight"
    assert first.place(name, (24, 64)) is None
    assert last.place(name, (24, 64)) == ("model.layers.0.self_attn.kv_a_proj_with_mqa.weight", None)
    assert last.place("model.layers.2.eh_proj.weight", (64, 128)) == ("model.layers.1.eh_proj.weight", None)
    assert first.place("model.layers.2.eh_proj.weight", (64, 128)) is None
    assert first.place("model.embed_tokens.weight", (256, 64)) == ("model.embed_tokens.weight", None)
    assert last.place("model.embed_tokens.weight", (256, 64)) is None
    assert last.place("lm_head.weight", (256, 64)) == ("lm_head.weight", None)
    assert first.place("lm_head.weight", (256, 64)) is None
    assert [len(x.local_spec.layers) for x in (first, last)] == [1, 1]
    assert len(first.local_spec.mtp) == 1  # every rank builds the MTP caches, so the drafter's loop runs on each


def test_a_tied_head_stays_with_the_embedding_on_rank_0(tmp_path):
    build_hf("gemma3_text", tmp_path, **CASES["gemma3"][1])
    assert [layout_of(tmp_path, r, 2).head_rank for r in range(2)] == [0, 0]


@pytest.mark.parametrize("size, budgets, match", [
    (3, None, "the model has 2 layers for 3 ranks; use fewer ranks or --parallel tensor"),
    (2, [1, 1, 1], r"must be one positive byte count per rank \(2 ranks\)"),
    (2, [1, 0], r"must be one positive byte count per rank \(2 ranks\)"),
    (2, [1, float("inf")], r"must be one positive byte count per rank \(2 ranks\)"),
])
def test_what_cannot_split_this_way_is_one_line(tmp_path, size, budgets, match):
    build_hf("llama", tmp_path, **CASES["llama3"][1])
    with pytest.raises(ParallelError, match=match):
        layout_of(tmp_path, 0, size, budgets)


def test_one_rank_holds_the_whole_pipeline(tmp_path):
    folder = mtp_fixture.build(tmp_path / "dsv3")[0]
    ref, _ = mlxmodels.load(folder)
    model = load_parallel(folder, "pipeline", group=mx.distributed.init())
    want, want_arrays = pipeline_worker.run(ref)
    got, got_arrays = pipeline_worker.run(model)
    assert got == want
    for key in want_arrays:
        assert np.array_equal(np.array(got_arrays[key]), np.array(want_arrays[key]))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from quantize.convert import Options, convert

    root = tmp_path_factory.mktemp("pipeline")
    out = []
    for case in ("llama3", "gemma3", "qwen3_moe", "mixtral"):
        model_type, config, _ = CASES[case]
        build_hf(model_type, root / case, **config)
        out.append(root / case)
    out.append(mtp_fixture.build(root / "dsv3")[0])
    convert(root / "llama3", root / "q4", Options(quantize=True))
    out.append(root / "q4")
    return out


@pytest.fixture(scope="module")
def ranks(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline-out")
    uneven = next(f for f in folders if f.name == "gemma3")
    proc = launch([pipeline_worker.__file__, ",".join(map(str, folders)), uneven, str(UNEVEN)], out, timeout=240)
    return rank_results(out, proc)


def assert_each_rank_holds_its_share(model, held: list, name: str):
    """Nothing held twice but the final norm (every rank keeps it), and no rank above half the model plus the
    largest layer (the ranges are whole layers)."""
    def nbytes(module):
        return sum(a.nbytes for _, a in tree_flatten(module.parameters()))

    whole, norm = nbytes(model), nbytes(model.model.norm)
    assert sum(held) == whole + norm * (len(held) - 1), f"{name}: ranks hold {held} of {whole}"
    bound = whole / len(held) + max(nbytes(layer) for layer in model.model.layers)
    assert max(held) <= bound, f"{name}: a rank holds {max(held)} bytes, above {bound:.0f} of {whole}"


def test_two_ranks_give_the_single_process_model(folders, ranks):
    for i, folder in enumerate(folders):
        model, _ = mlxmodels.load(folder)
        want, arrays = pipeline_worker.run(model)
        for rank, got in enumerate(ranks):
            mine = got[str(folder)]
            for key in ("prefill", "decode", "paged"):
                err = np.abs(got["arrays"][f"{i}.{key}"] - np.array(arrays[key])).max()
                assert err <= TOL, f"{folder.name} rank {rank}: {key} logits off by {err}"
            assert mine["greedy"] == want["greedy"], f"{folder.name} rank {rank}: greedy tokens differ"
            assert mine.get("speculative") == want.get("speculative"), f"{folder.name} rank {rank}: MTP drafts"
        assert_each_rank_holds_its_share(model, [got[str(folder)]["bytes"] for got in ranks], folder.name)
        assert sum(got[str(folder)]["layers"] for got in ranks) == model.spec.num_layers
        assert "speculative" in want or folder.name != "dsv3"


def test_uneven_budgets_give_uneven_ranges(folders, ranks):
    folder = next(f for f in folders if f.name == "gemma3")
    ranges = layout_of(folder, 0, 2, UNEVEN).ranges
    assert [got["uneven"]["layers"] for got in ranks] == [stop - start for start, stop in ranges]
    assert ranges[0][1] - ranges[0][0] < ranges[1][1] - ranges[1][0]
    model, _ = mlxmodels.load(folder)
    want, _ = pipeline_worker.run(model)
    assert all(got["uneven"]["greedy"] == want["greedy"] for got in ranks)
