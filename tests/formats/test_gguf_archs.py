"""Every GGUF architecture we read, on tiny random models written as llama.cpp's convert_hf_to_gguf.py writes them:
the safetensors transformers saved, named by the `gguf` package's own tensor map, with convert's transforms (Q/K
rows permuted for llama-style RoPE, Gemma norms stored as 1 + w, experts stacked, DeepSeek's kv_b split into
k_b/v_b, GPT-2's Conv1D transposed and its head copied from the embedding) and its metadata keys (the writer's
add_* methods). Our float32 logits are compared with transformers' GGUF loader on the same file where transformers
reads the architecture (then some layers are Q8_0, kept quantized by us and dequantized by it), else with
transformers on the model the file was written from (all F32)."""

from __future__ import annotations

import re

import mlx.core as mx
from mlx.utils import tree_flatten
import numpy as np
import pytest

import mlxmodels
from tests.families.test_families import BASE, MLA
from tests.oracle import build_hf, hf_logits

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
TOL = 1e-4
GEMMA = dict(BASE, num_attention_heads=2, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
             sliding_window=8)
SCALED = dict(head_dim=32, query_pre_attn_scalar=32)  # what llama.cpp computes for every Gemma but the 27B models

# name -> (GGUF architecture, HF model_type, config, oracle: "gguf" = transformers' GGUF loader, "hf" = the model)
CASES = {
    "qwen2": ("qwen2", "qwen2", dict(BASE, num_key_value_heads=1), "gguf"),
    # transformers' GGUF loader gives Qwen3 its default head_dim (128), so the tiny model has it too
    "qwen3": ("qwen3", "qwen3", dict(BASE, head_dim=128), "gguf"),
    # ... and Qwen3-MoE its default moe_intermediate_size (768: it does not read expert_feed_forward_length)
    "qwen3moe": ("qwen3moe", "qwen3_moe", dict(BASE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=768,
                                               norm_topk_prob=True), "gguf"),
    # llama.cpp scales queries by head_dim ** -0.5 (transformers' GGUF loader: its default 256 ** -0.5)
    "gemma2": ("gemma2", "gemma2", dict(GEMMA, num_hidden_layers=3), "gguf"),
    # ... nor the soft-caps (its defaults, 30 and 50, are the model's above)
    "gemma2-softcap": ("gemma2", "gemma2", dict(GEMMA, num_hidden_layers=3, final_logit_softcapping=3.0,
                                                attn_logit_softcapping=5.0, **SCALED), "hf"),
    "gemma3": ("gemma3", "gemma3_text", dict(GEMMA, num_hidden_layers=6), "gguf"),
    "gemma3-linear": ("gemma3", "gemma3_text", dict(GEMMA, num_hidden_layers=6, **SCALED,
                                                    rope_scaling=dict(rope_type="linear", factor=8.0)), "hf"),
    "mixtral": ("llama", "mixtral", dict(BASE, num_local_experts=4, num_experts_per_tok=2), "hf"),
    "llama": ("llama", "llama", dict(BASE), "gguf"),
    # attention_bias: q/k/v/o biases, the Q/K ones permuted by convert as their weights' rows (no key says so:
    # transformers' GGUF loader builds the model without biases, hence the model as the oracle)
    "llama-attention-bias": ("llama", "llama", dict(BASE, attention_bias=True), "hf"),
    # Llama 3.1's scaling, which convert writes as a rope_freqs tensor of per-frequency factors
    "llama-llama3-rope": ("llama", "llama", dict(BASE, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=8192)), "hf"),
    "deepseek_v2": ("deepseek2", "deepseek_v2", dict(MLA, q_lora_rank=None, rope_scaling=dict(
        rope_type="yarn", factor=4.0, mscale=0.707, mscale_all_dim=0.707, original_max_position_embeddings=16,
        beta_fast=32, beta_slow=1)), "hf"),
    "deepseek_v3": ("deepseek2", "deepseek_v3", dict(MLA, n_group=4, topk_group=2, routed_scaling_factor=2.5), "hf"),
    "olmo2": ("olmo2", "olmo2", dict(BASE), "hf"),
    "smollm3": ("smollm3", "smollm3", dict(BASE, num_hidden_layers=4, no_rope_layer_interval=4), "hf"),
    "gpt2": ("gpt2", "gpt2", dict(n_embd=64, n_layer=2, n_head=4, n_positions=1024, vocab_size=256), "gguf"),
    "llama4": ("llama4", "llama4_text", dict(BASE, num_hidden_layers=4, num_local_experts=4, num_experts_per_tok=1,
                                             intermediate_size_mlp=96, interleave_moe_layer_step=2,
                                             use_qk_norm=True), "hf"),
}


def permute(w, heads):
    """convert_hf_to_gguf's LlamaModel.permute."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


NEXTN = ("eh_proj", "enorm", "hnorm", "embed_tokens", "shared_head.head", "shared_head.norm")


def gguf_name(names, stem: str) -> str:
    """The GGUF name of a tensor stem: DeepSeek's MTP tensors as current llama.cpp's map names them (blk.N.nextn.*,
    gguf-py/gguf/tensor_mapping.py; the gguf package here predates them), the rest by the package's map."""
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", stem)
    if m and m[2] in NEXTN:
        return f"blk.{m[1]}.nextn.{m[2].replace('.', '_')}"
    return names.get_name(stem)


def llama_cpp_tensors(arch: str, folder, c: dict) -> dict:
    """convert_hf_to_gguf's modify_tensors for `arch`, on the saved safetensors: GGUF name -> float32 array."""
    from safetensors.numpy import load_file

    layers = c.get("num_hidden_layers") or c["n_layer"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], layers)
    out, experts = {}, {}

    def put(hf: str, w):
        stem, kind = hf.rsplit(".", 1)
        out[f"{gguf_name(names, stem)}.{kind}"] = np.ascontiguousarray(w, np.float32)

    for name, w in load_file(folder / "model.safetensors").items():
        name = name.replace("e_score_correction_bias", "e_score_correction.bias")
        if arch in ("llama", "smollm3") and name.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias",
                                                           "k_proj.bias")):
            w = permute(w, c["num_attention_heads"] if "q_proj" in name else c["num_key_value_heads"])
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            w = w + 1
        m = re.fullmatch(r"(.*)\.experts\.(\d+)\.(\w+)\.weight", name)
        if m:  # stacked per layer and projection into one (E, out, in) tensor
            experts.setdefault((m[1], m[3]), {})[int(m[2])] = w
        elif arch == "llama4" and name.endswith("experts.gate_up_proj"):  # (E, hidden, 2 * inter)
            gate, up = np.split(w.swapaxes(1, 2), 2, axis=1)
            put(name.replace("gate_up_proj", "gate_proj.weight"), gate)
            put(name.replace("gate_up_proj", "up_proj.weight"), up)
        elif arch == "llama4" and name.endswith("experts.down_proj"):
            put(name + ".weight", w.swapaxes(1, 2))
        elif arch == "deepseek2" and name.endswith("kv_b_proj.weight"):
            heads, nope = c["num_attention_heads"], c["qk_nope_head_dim"]
            kv_b = w.reshape(heads, nope + c["v_head_dim"], w.shape[-1])
            put(name.replace("kv_b_proj", "k_b_proj"), kv_b[:, :nope].swapaxes(1, 2))
            put(name.replace("kv_b_proj", "v_b_proj"), kv_b[:, nope:])
        elif arch == "gpt2":
            if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
                continue
            put(name, w.T if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else w)
            if name.endswith("wte.weight"):  # GPT-2's head is the embedding: convert writes it as `output` too
                out["output.weight"] = out["token_embd.weight"]
        else:
            put(name, w)
    for (prefix, proj), by_expert in experts.items():
        put(f"{prefix}.experts.{proj}.weight", np.stack([by_expert[e] for e in range(len(by_expert))]))
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    if rope.get("rope_type") == "llama3":
        out["rope_freqs.weight"] = llama3_factors(c, rope)
    return out


def llama3_factors(c: dict, rope: dict) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.generate_extra_tensors: one factor per rotated pair, 1 for short
    wavelengths, `factor` for long ones, smoothly between."""
    dims = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, dims, 2, dtype=np.float32) / dims))
    low_wavelen = rope["original_max_position_embeddings"] / rope["low_freq_factor"]
    high_wavelen = rope["original_max_position_embeddings"] / rope["high_freq_factor"]
    out = []
    for freq in freqs:
        wavelen = 2 * np.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(rope["factor"])
        else:
            smooth = (rope["original_max_position_embeddings"] / wavelen - rope["low_freq_factor"]) / (
                rope["high_freq_factor"] - rope["low_freq_factor"])
            out.append(1 / ((1 - smooth) / rope["factor"] + smooth))
    return np.array(out, np.float32)


def write_metadata(w, arch: str, c: dict, tensors: dict):
    """The keys convert_hf_to_gguf writes for `arch` (TextModel.set_gguf_parameters and the model's own)."""
    # convert always writes the vocabulary, whose length is transformers' vocab_size where no key gives it; with no
    # tokenizer.ggml.model, neither loader builds a tokenizer from it
    w.add_token_list([f"t{i}" for i in range(c["vocab_size"])])
    if arch == "gpt2":
        w.add_block_count(c["n_layer"])
        w.add_context_length(c["n_positions"])
        w.add_embedding_length(c["n_embd"])
        w.add_feed_forward_length(4 * c["n_embd"])
        w.add_head_count(c["n_head"])
        w.add_layer_norm_eps(c["layer_norm_epsilon"])
        return
    heads = c["num_attention_heads"]
    w.add_block_count(c["num_hidden_layers"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size_mlp"] if arch == "llama4" else c["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(1 if arch == "deepseek2" else c["num_key_value_heads"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    rope = c.get("rope_parameters") or {}
    local = rope.get("sliding_attention", {}).get("rope_theta")
    rope = rope.get("full_attention", rope)  # Gemma 3: one set per layer type
    w.add_rope_freq_base(rope["rope_theta"])
    if local is not None:
        w.add_rope_freq_base_swa(local)
    if rope.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    elif rope.get("rope_type") == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope["factor"])
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        for key in ("beta_fast", "beta_slow"):
            if key in rope:
                getattr(w, f"add_rope_scaling_yarn_{key}")(rope[key])
    experts = c.get("num_local_experts") or c.get("num_experts") or c.get("n_routed_experts")
    if experts:
        w.add_expert_count(experts)
        w.add_expert_used_count(c["num_experts_per_tok"])
    if c.get("n_group"):
        w.add_expert_group_count(c["n_group"])
        w.add_expert_group_used_count(c["topk_group"])
    if c.get("scoring_func"):
        w.add_expert_gating_func(gguf.ExpertGatingFuncType[c["scoring_func"].upper()])
    if c.get("head_dim") and arch not in ("deepseek2",):
        w.add_key_length(c["head_dim"])
        w.add_value_length(c["head_dim"])
    if arch in ("llama", "smollm3"):
        w.add_vocab_size(c["vocab_size"])
        w.add_rope_dimension_count(c.get("head_dim") or c["hidden_size"] // heads)
    if arch == "qwen3moe":
        w.add_expert_feed_forward_length(c["moe_intermediate_size"])
    if arch.startswith("gemma"):
        w.add_sliding_window(c["sliding_window"])
        if c.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(c["final_logit_softcapping"])
    if arch == "gemma2":
        w.add_attn_logit_softcapping(c["attn_logit_softcapping"])
    if arch == "llama4":
        w.add_interleave_moe_layer_step(c["interleave_moe_layer_step"])
        w.add_expert_feed_forward_length(c["intermediate_size"])
        w.add_vocab_size(c["vocab_size"])
        w.add_rope_dimension_count(c["head_dim"])
    if arch == "deepseek2":
        w.add_leading_dense_block_count(c["first_k_dense_replace"])
        w.add_vocab_size(c["vocab_size"])
        if c.get("q_lora_rank"):
            w.add_q_lora_rank(c["q_lora_rank"])
        w.add_kv_lora_rank(c["kv_lora_rank"])
        w.add_key_length(c["kv_lora_rank"] + c["qk_rope_head_dim"])
        w.add_value_length(c["kv_lora_rank"])
        w.add_key_length_mla(c["qk_nope_head_dim"] + c["qk_rope_head_dim"])
        w.add_value_length_mla(c["v_head_dim"])
        w.add_expert_feed_forward_length(c["moe_intermediate_size"])
        w.add_expert_shared_count(c["n_shared_experts"])
        w.add_expert_weights_scale(c["routed_scaling_factor"])
        if c.get("norm_topk_prob"):
            w.add_expert_weights_norm(True)
        w.add_rope_dimension_count(c["qk_rope_head_dim"])
        if rope.get("mscale_all_dim"):
            w.add_rope_scaling_yarn_log_mul(0.1 * rope["mscale_all_dim"])


def export(hf, arch: str, folder, path, quantize: bool, nextn: int = 0, fuse_gate_up: bool = False):
    """The tiny model as a GGUF file; with `quantize`, layer 0's matrices (and stacked experts) in Q8_0; `nextn`:
    how many of `hf`'s last layers are MTP modules (counted in block_count, as DeepSeek-V3.2's convert writes);
    `fuse_gate_up`: experts as convert's --fuse-gate-up-exps writes them."""
    c = hf.config.to_dict()
    if arch == "deepseek2":
        c["scoring_func"] = "sigmoid" if c["model_type"] == "deepseek_v3" else "softmax"
    w = gguf.GGUFWriter(str(path), arch)
    tensors = llama_cpp_tensors(arch, folder, c)
    for gate in [n for n in tensors if fuse_gate_up and ".ffn_gate_exps." in n]:  # (E, 2 * ff, hidden), gate first
        up = tensors.pop(gate.replace("gate_exps", "up_exps"))
        tensors[gate.replace("gate_exps", "gate_up_exps")] = np.concatenate([tensors.pop(gate), up], axis=1)
    write_metadata(w, arch, c, tensors)
    if nextn:
        w.add_nextn_predict_layers(nextn)
    for name, a in tensors.items():
        # convert (and llama-quantize) keep routers in F32 whatever the file type
        small = a.ndim < 2 or a.shape[-1] % 32 or ".ffn_gate_inp." in name
        qtype = Q.Q8_0 if quantize and name.startswith("blk.0.") and not small else Q.F32
        w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("name", sorted(CASES))
def test_architecture_matches_transformers(tmp_path, name):
    import torch
    from transformers import AutoModelForCausalLM

    arch, model_type, cfg, oracle = CASES[name]
    hf = build_hf(model_type, tmp_path / "hf", seed=len(name), **cfg)
    path = export(hf, arch, tmp_path / "hf", tmp_path / "hf" / "m.gguf", quantize=oracle == "gguf")
    model, _ = mlxmodels.load(path, dtype="float32")
    if oracle == "gguf":
        hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", gguf_file="m.gguf", dtype=torch.float32).eval()
        kept = [k for k, _ in tree_flatten(model.parameters()) if k.endswith(".scales")]
        assert kept and all(k.startswith("model.layers.0.") for k in kept)  # Q8_0 kept quantized, not dequantized
    ids = np.random.default_rng(0).integers(0, 256, (1, 40))
    got = np.array(model(mx.array(ids)).astype(mx.float32))
    want = hf_logits(hf, ids)
    assert np.abs(got - want).max() < TOL, (name, np.abs(got - want).max())


def test_deepseek_fused_gate_up_experts(tmp_path):
    """Experts as convert's --fuse-gate-up-exps writes them (deepseek2 is the one of our architectures whose llama.cpp
    loader reads them): in Q8_0, the same weights, bit for bit, as the file with them apart; in F32, transformers'
    logits."""
    arch, model_type, cfg, _ = CASES["deepseek_v3"]
    hf = build_hf(model_type, tmp_path / "hf", seed=3, **dict(cfg, first_k_dense_replace=0))
    apart = export(hf, arch, tmp_path / "hf", tmp_path / "apart.gguf", quantize=True)
    fused = export(hf, arch, tmp_path / "hf", tmp_path / "fused.gguf", quantize=True, fuse_gate_up=True)
    assert {t.name for t in gguf.GGUFReader(fused).tensors} >= {"blk.0.ffn_gate_up_exps.weight"}
    want = dict(tree_flatten(mlxmodels.load(apart, dtype="float32")[0].parameters()))
    got = dict(tree_flatten(mlxmodels.load(fused, dtype="float32")[0].parameters()))
    assert "model.layers.0.mlp.switch_mlp.gate_proj.scales" in got  # Q8_0 kept quantized
    assert got.keys() == want.keys() and all(mx.array_equal(got[k], want[k]).item() for k in got)
    model, _ = mlxmodels.load(export(hf, arch, tmp_path / "hf", tmp_path / "f32.gguf", quantize=False,
                                     fuse_gate_up=True), dtype="float32")
    ids = np.random.default_rng(0).integers(0, 256, (1, 40))
    assert np.abs(np.array(model(mx.array(ids)).astype(mx.float32)) - hf_logits(hf, ids)).max() < TOL
