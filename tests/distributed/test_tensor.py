"""Tensor mode on 2 ranks (one mlx.launch for every model) against the single-process model: float32 logits of a
prefill and of a cached decode, 32 greedy tokens, MTP speculative decoding, each rank's parameter bytes; and the
models it refuses, in one process."""

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest

import mlxmodels
from mlxmodels.distributed import ParallelError
from mlxmodels.distributed.tensor import TensorLayout
from mlxmodels.families import build_spec
from mlxmodels.config import read_config
from tests import mtp_fixture
from tests.distributed.harness import launch, rank_results
from tests.distributed.tensor_worker import observe
from tests.families.test_families import CASES
from tests.oracle import build_hf

TOL = 1e-4
N = 2
# name -> (model_type, config): GQA split, an odd vocabulary, 1 KV head kept per rank with every bias, MoE
MODELS = {
    "llama3": CASES["llama3"][:2],
    "gemma3": ("gemma3_text", dict(CASES["gemma3"][1], vocab_size=257)),  # tied head, rows 129 + 128
    "llama_bias": ("llama", dict(CASES["llama2-linear"][1], num_key_value_heads=1)),  # o_proj/down_proj bias
    "qwen3_moe": CASES["qwen3_moe"][:2],
    "mixtral": CASES["mixtral"][:2],
}
# parameter bytes a rank may hold, as a fraction of the whole: 1/N plus what stays whole (norms, routers, MLA's
# latent projections, MTP's eh_proj), which is large in these tiny models
SHARE = {"dsv3_mtp": 0.58}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tensor")
    folders = {}
    for name, (model_type, config) in MODELS.items():
        build_hf(model_type, root / name, **config)
        folders[name] = root / name
    folders["dsv3_mtp"], _ = mtp_fixture.build(root / "dsv3_mtp")
    for name in ("llama3", "gemma3"):  # an own head and a tied one
        folders[f"{name}_q4"] = quantized(root, name)
    proc = launch([ROOT_WORKER, *(f"{n}={f}" for n, f in folders.items())], root / "out", n=N, timeout=240)
    ranks = rank_results(root / "out", proc, n=N)
    refs = {name: observe(mlxmodels.load(f)[0], mtp=name == "dsv3_mtp") for name, f in folders.items()}
    return ranks, refs


def quantized(root, name: str) -> Path:
    """MODELS[name] at 4 bits in groups of 32 (embedding and head too), so each rank's 32 o_proj input columns hold
    whole groups."""
    from quantize.convert import Options, convert
    from quantize.recipes import Setting

    convert(root / name, root / f"{name}_q4", Options(quantize=True, setting=Setting(group_size=32)))
    return root / f"{name}_q4"


ROOT_WORKER = "tests/distributed/tensor_worker.py"
NAMES = [*MODELS, "dsv3_mtp", "llama3_q4", "gemma3_q4"]


@pytest.mark.parametrize("name", NAMES)
def test_logits_of_prefill_cached_and_paged_decode_equal_one_process(run, name):
    ranks, refs = run
    for r, result in enumerate(ranks):
        for what in ("prefill", "decode", "paged"):
            got, want = result["arrays"][f"{name}.{what}"], np.array(refs[name][1][what])
            assert got.shape == want.shape, (r, what)
            assert np.abs(got - want).max() <= TOL, (r, what, np.abs(got - want).max())


@pytest.mark.parametrize("name", NAMES)
def test_greedy_tokens_equal_one_process(run, name):
    ranks, refs = run
    for result in ranks:
        assert result[name]["tokens"] == refs[name][0]["tokens"]


def test_mtp_speculative_decoding_equals_plain_decoding(run):
    ranks, refs = run
    for result in ranks:
        assert result["dsv3_mtp"]["speculative"] == refs["dsv3_mtp"][0]["tokens"]


@pytest.mark.parametrize("name", NAMES)
def test_each_rank_holds_about_its_share_of_the_parameters(run, name):
    ranks, refs = run
    whole = refs[name][0]["bytes"]
    held = [result[name]["bytes"] for result in ranks]
    assert max(held) <= whole * SHARE.get(name, 0.53), (held, whole)
    assert sum(held) >= whole  # nothing is left out


def group(rank=0, size=N):
    return SimpleNamespace(rank=lambda: rank, size=lambda: size)


def spec_of(tmp_path, model_type, **config):
    build_hf(model_type, tmp_path, **config)
    return build_spec(read_config(tmp_path), str(tmp_path / "config.json"))[1]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return spec_of(tmp_path_factory.mktemp("llama"), "llama", **CASES["llama3"][1])


def changed(spec, attn=None, ffn=None):
    """spec with every layer's AttnSpec / FFNSpec fields changed."""
    return spec.with_layers(replace(l, attn=replace(l.attn, **(attn or {})), ffn=replace(l.ffn, **(ffn or {})))
                            for l in spec.layers)


@pytest.mark.parametrize("attn, ffn, size, message", [
    (dict(n_heads=6), None, 4, "layer 0: 6 attention heads do not divide into 4 ranks; use --parallel pipeline"),
    (None, None, 8, "4 attention heads do not divide into 8"),
    (dict(n_heads=6, n_kv_heads=3), None, 2, "3 KV heads neither divide into nor divide 2 ranks"),
    (None, dict(hidden=130), 4, "FFN intermediate 130 do not divide into 4"),
])
def test_what_does_not_divide_is_one_line_naming_it(llama, attn, ffn, size, message):
    with pytest.raises(ParallelError, match=message):
        TensorLayout(changed(llama, attn, ffn), group(0, size))


def test_a_norm_over_the_whole_projection_is_refused(tmp_path):
    with pytest.raises(ParallelError, match="whole projection .*--parallel pipeline"):
        TensorLayout(spec_of(tmp_path, "olmo2", **CASES["olmo2"][1]), group())


def test_fewer_kv_heads_than_ranks_keep_the_kv_head_each_rank_reads(llama):
    spec = llama  # 4 query heads, 2 KV heads of 16
    shape = (2 * 16, 64)  # k_proj: 2 KV heads of 16
    reads = [TensorLayout(spec, group(r, 4)).place("model.layers.0.self_attn.k_proj.weight", shape)[1]
             for r in range(4)]
    assert [c.bounds(shape, "k") for c in reads] == [(0, 0, 16), (0, 0, 16), (0, 16, 32), (0, 16, 32)]


def test_quantization_groups_split_across_ranks_are_refused_naming_the_tensor(llama):
    layout = TensorLayout(llama, group())
    name = "model.layers.1.self_attn.o_proj.scales"
    _, cut = layout.place(name, (64, 1))  # 64 input columns in one group of 64: half a group per rank
    with pytest.raises(ParallelError, match=f"{name}.*another --parallel mode"):
        cut.bounds((64, 1), name)
