"""Folders converted from transformers-5 sources load in mlx-lm with our logits (quantize/legacy_keys.py).

transformers 5 writes `rope_parameters`, `layer_types` and new key spellings, which mlx-lm's ModelArgs do not
read: it silently takes its own defaults. Each case is a tiny random transformers-5 model of a family mlx-lm and we
both run, with the settings those keys carry made non-default (llama3 / yarn / linear scaling, Gemma 3's two bases
and its local:global layout, RoPE bases mlx-lm does not assume) so that a missing key changes mlx-lm's logits.
Each converted folder must give transformers' logits in ours and ours in mlx-lm, and without any one of the keys
convert added mlx-lm must fail to load it or compute another model (else that key's case proves nothing). The reverse
direction (mlx-lm's folders in ours) is test_roundtrip's, and DeepSeek-V2's is here: mlx-lm stores its MLA
`kv_b_proj` whole, which we keep split per head.
"""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
from transformers import AutoConfig

from mlxmodels.config import ModelError
from quantize.convert import Options, convert
from quantize.legacy_keys import add_legacy_keys, pattern
from quantize.recipes import Setting
from tests.families.test_families import BASE, MLA  # the tiny shapes every family case starts from
from tests.dialects import legacy
from tests.oracle import build_hf, edit_config, hf_logits, save_byte_tokenizer
from tests.quantize.test_roundtrip import IDS, VOCAB, ours, theirs

TOL = 1e-4  # relative to the largest logit
LLAMA3 = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=16)
YARN = dict(rope_type="yarn", rope_theta=50000.0, factor=4.0, original_max_position_embeddings=16)
WIDE = 32  # a window over the whole prompt (IDS has 24 tokens): see the gaps below


def plain(theta: float) -> dict:
    return dict(rope_type="default", rope_theta=theta)


# name -> (model_type, transformers-5 config): every family both mlx-lm and we run. Where mlx-lm computes a family
# differently from transformers whatever its config says, the case steers clear of it:
# - mistral, gemma2: mlx-lm has no sliding window for them (its llama needs one full-attention layer, its gemma2
#   has none; tests/families/test_families.py checks that gap), so their window covers the prompt;
# - qwen2_moe, qwen3_moe, mixtral, gemma2: mlx-lm's RoPE there is nn.RoPE (no scaling), so only the base differs;
# - qwen2_moe: mlx-lm ignores mlp_only_layers (test_families), so every layer is sparse;
# - no case: llama4 (mlx-lm's llama4_text has no MoE layers), the multimodal gemma3 / llama4 wrappers (their
#   text_config is translated alike: see the unit tests below), kimi_k2 (not a transformers model_type).
CASES = {
    "llama3": ("llama", dict(BASE, rope_parameters=LLAMA3)),
    "mistral": ("mistral", dict(BASE, sliding_window=WIDE, rope_parameters=plain(1e6))),
    "qwen2-yarn": ("qwen2", dict(BASE, num_key_value_heads=1, rope_parameters=YARN)),
    "qwen3-yarn": ("qwen3", dict(BASE, rope_parameters=YARN)),
    "olmo2-linear": ("olmo2", dict(BASE, rope_parameters=dict(rope_type="linear", factor=2.0, rope_theta=5e5))),
    "smollm3": ("smollm3", dict(BASE, num_hidden_layers=4, no_rope_layer_interval=2, rope_parameters=plain(2e6))),
    "gemma2": ("gemma2", dict(BASE, num_hidden_layers=3, sliding_window=WIDE, query_pre_attn_scalar=24,
                              rope_parameters=plain(1e5))),
    "gemma3": ("gemma3_text", dict(BASE, num_hidden_layers=6, sliding_window=8, query_pre_attn_scalar=24,
                                   layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
                                   rope_parameters={"full_attention": dict(rope_type="linear", factor=8.0,
                                                                           rope_theta=2e4),
                                                    "sliding_attention": plain(5e3)})),
    "gpt2": ("gpt2", dict(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=256)),
    "mixtral": ("mixtral", dict(BASE, num_local_experts=4, num_experts_per_tok=2, rope_parameters=plain(5e4))),
    "qwen2_moe": ("qwen2_moe", dict(BASE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                    shared_expert_intermediate_size=64, rope_parameters=plain(5e4))),
    "qwen3_moe": ("qwen3_moe", dict(BASE, num_local_experts=8, num_experts_per_tok=3, moe_intermediate_size=32,
                                    norm_topk_prob=True, rope_parameters=plain(5e4))),
    # kv_lora and nope a multiple of 64, so 4-bit quantizes MLA's kv_b_proj; the byte tokenizer's vocabulary, which
    # mlx_lm.convert needs (test_mlx_lm_deepseek_v2_folder_loads_in_ours)
    "deepseek_v2-yarn": ("deepseek_v2", dict(MLA, q_lora_rank=None, kv_lora_rank=64, qk_nope_head_dim=64,
                                             vocab_size=VOCAB, rope_parameters=dict(  # V2-Lite's, but the base
        rope_type="yarn", rope_theta=50000.0, factor=4.0, mscale=0.707, mscale_all_dim=0.707,
        original_max_position_embeddings=16, beta_fast=32, beta_slow=1))),
    "deepseek_v3-yarn": ("deepseek_v3", dict(MLA, n_group=4, topk_group=2, routed_scaling_factor=2.5,
                                             rope_parameters=dict(YARN, mscale=1.0, mscale_all_dim=0.8))),
}
# mlx-lm reads these families' transformers-5 keys itself: taking ours away changes nothing there.
READS_V5 = {"qwen3-yarn"}
QUANTIZED = ["llama3", "gemma3", "qwen3_moe", "deepseek_v2-yarn"]


def close(got, want, scale):
    np.testing.assert_allclose(got, want, atol=TOL * scale, rtol=0)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Lazily built transformers-5 source folders with transformers' logits."""
    cache = {}

    def get(name):
        if name not in cache:
            model_type, config = CASES[name]
            folder = tmp_path_factory.mktemp(name)
            hf = build_hf(model_type, folder, seed=len(name), **config)
            cfg = json.loads((folder / "config.json").read_text())
            assert not {"rope_theta", "rope_scaling", "sliding_window_pattern", "n_ctx"} & cfg.keys(), \
                "transformers no longer writes the transformers-5 dialect: this test checks nothing"
            ref = hf_logits(hf, IDS)
            cache[name] = dict(folder=folder, ref=ref, scale=max(1.0, float(np.abs(ref).max())))
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(CASES))
def test_float_folder_gives_our_logits_in_mlx_lm(sources, tmp_path, name):
    src = sources(name)
    out = tmp_path / "out"
    convert(src["folder"], out, Options(dtype="float32"))
    mine = ours(out)
    close(mine, src["ref"], src["scale"])  # ours is right, so mlx-lm agreeing with ours is too
    # transformers 5 prefers rope_scaling + rope_theta over rope_parameters when both are there: they must agree
    want, got = AutoConfig.from_pretrained(src["folder"]), AutoConfig.from_pretrained(out)
    assert rope_of(got) == rope_of(want) and getattr(got, "layer_types", None) == getattr(want, "layer_types", None)
    close(theirs(out), mine, src["scale"])
    if name not in READS_V5:
        assert_each_added_key_matters(out, src, mine)


def assert_each_added_key_matters(out, src, mine):
    """Without any one of the keys convert added, mlx-lm cannot load the folder or computes another model."""
    source = json.loads((src["folder"] / "config.json").read_text())
    written = json.loads((out / "config.json").read_text())
    added = [k for k in written.keys() - source.keys() if written[k] is not None]
    assert added
    for key in added:
        (out / "config.json").write_text(json.dumps({k: v for k, v in written.items() if k != key}))
        try:
            err = np.abs(theirs(out) - mine).max()
        # a required key missing, a layout it cannot index, or (deepseek_v2) rope_scaling read without a check
        except (TypeError, ValueError, IndexError, AttributeError):
            continue
        assert err > 100 * TOL * src["scale"], f"mlx-lm did not need {key} ({written[key]!r}) here"


def rope_of(config):
    """rope_parameters as transformers reads it, less the older `type` spelling it keeps from rope_scaling."""
    rope = getattr(config, "rope_parameters", None) or {}
    if all(isinstance(v, dict) for v in rope.values()):
        return {k: {n: x for n, x in v.items() if n != "type"} for k, v in rope.items()}
    return {n: x for n, x in rope.items() if n != "type"}


@pytest.mark.parametrize("name", QUANTIZED)
def test_quantized_folder_gives_our_logits_in_mlx_lm(sources, tmp_path, name):
    src = sources(name)
    out = tmp_path / "q4"
    convert(src["folder"], out, Options(dtype="float32", quantize=True, setting=Setting(bits=4, group_size=64)))
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 4
    close(theirs(out), ours(out), src["scale"])


# ------------------------------------------------------------------------------------------ DeepSeek-V2's kv_b_proj


KV_B = "model.layers.{}.self_attn.kv_b_proj"


def test_deepseek_v2_keeps_mixed_bits_under_kv_b_proj(sources, tmp_path):
    """A recipe's extra bits for MLA's value half (unembed_out, first and last layer) go to the whole kv_b_proj,
    under its name only, and both loaders dequantize it with them (4 bits would not fit its shape)."""
    src = sources("deepseek_v2-yarn")
    out = tmp_path / "mixed"
    convert(src["folder"], out, Options(dtype="float32", quantize=True, setting=Setting(recipe="edges_4_6")))
    q = json.loads((out / "config.json").read_text())["quantization"]
    assert {k for k in q if ".self_attn." in k} == {KV_B.format(0), KV_B.format(2)} and q[KV_B.format(0)]["bits"] == 6
    w = mx.load(str(out / "model.safetensors"))
    assert w[f"{KV_B.format(0)}.weight"].shape == (4 * (64 + 12), 64 * 6 // 32)  # H * (nope + v), kv_lora at 6 bits
    assert not [k for k in w if ".embed_q." in k or ".unembed_out." in k]
    close(theirs(out), ours(out), src["scale"])


def test_mlx_lm_deepseek_v2_folder_loads_in_ours(sources, tmp_path):
    """mlx_lm.convert's 4-bit deepseek_v2 folder (kv_b_proj whole and quantized, as mlx-community publishes them)
    gives mlx-lm's logits in ours, and our convert of the same source writes the same tensors, bit for bit."""
    from mlx_lm.convert import convert as mlx_lm_convert

    src = tmp_path / "legacy"
    shutil.copytree(sources("deepseek_v2-yarn")["folder"], src)
    edit_config(src, legacy)  # the older dialect mlx-lm reads
    save_byte_tokenizer(src)  # mlx_lm.convert needs a tokenizer
    theirs_out, ours_out = tmp_path / "mlx-lm", tmp_path / "ours"
    mlx_lm_convert(str(src), str(theirs_out), quantize=True, q_group_size=64, q_bits=4, dtype="float32")
    a = mx.load(str(theirs_out / "model.safetensors"))
    assert a[f"{KV_B.format(1)}.scales"].shape == (4 * (64 + 12), 1)
    want = theirs(theirs_out)
    close(ours(theirs_out), want, float(np.abs(want).max()))
    convert(src, ours_out, Options(dtype="float32", quantize=True))
    b = mx.load(str(ours_out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and mx.array_equal(a[k], b[k]).item(), k


def test_a_kv_b_proj_that_does_not_fit_its_quantization_entry_is_one_clear_error(sources, tmp_path):
    out = tmp_path / "q4"
    convert(sources("deepseek_v2-yarn")["folder"], out, Options(dtype="float32", quantize=True))
    edit_config(out, lambda c: c["quantization"].update({KV_B.format(1): {"bits": 8, "group_size": 64}}))
    with pytest.raises(ModelError, match=rf"{KV_B.format(1)}: the stored weight .* 8 bits, group size 64\)"):
        ours(out)


# ------------------------------------------------------------------------------------------ the translation


def test_keys_the_source_has_are_never_changed():
    cfg = {"model_type": "qwen3_moe", "rope_parameters": LLAMA3, "rope_theta": 7.0, "num_local_experts": 8,
           "num_experts": 4, "rope_scaling": None}
    out = add_legacy_keys(cfg)
    assert out["rope_theta"] == 7.0 and out["num_experts"] == 4  # kept, though they disagree
    assert out["rope_scaling"] == {**{k: v for k, v in LLAMA3.items() if k != "rope_theta"}, "type": "llama3"}
    assert cfg["rope_scaling"] is None and out["rope_parameters"] == LLAMA3  # a copy; the newer keys stay


def test_a_legacy_source_gains_nothing():
    cfg = {"model_type": "llama", "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}}
    assert add_legacy_keys(cfg) == cfg


def test_plain_rope_writes_a_null_scaling_and_wrappers_are_translated_inside():
    cfg = {"model_type": "gemma3", "text_config": {"model_type": "gemma3_text", "layer_types": ["sliding_attention"] * 5
                                                   + ["full_attention"], "rope_parameters": {
        "full_attention": plain(1e6), "sliding_attention": plain(1e4)}}}
    text = add_legacy_keys(cfg)["text_config"]
    assert (text["rope_theta"], text["rope_local_base_freq"], text["sliding_window_pattern"]) == (1e6, 1e4, 6)
    assert "rope_scaling" in text and text["rope_scaling"] is None  # written: mlx-lm's llama4 requires the key


@pytest.mark.parametrize("types,every", [
    (["sliding_attention", "full_attention"] * 3, 2),
    (["sliding_attention"] * 5 + ["full_attention"] + ["sliding_attention"] * 2, 6),  # a partial last period
    (["full_attention"] * 3, 1),
    (["sliding_attention"] * 4, None),  # no global layer: mlx-lm cannot run it, so no pattern is claimed
    (["sliding_attention", "full_attention", "full_attention"], None),  # not periodic
    (None, None),
])
def test_layer_types_become_a_pattern_only_when_it_says_the_same(types, every):
    assert pattern(types) == every
