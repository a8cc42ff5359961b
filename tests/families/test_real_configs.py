"""Real checkpoints' config.json files (tests/data/configs/*, sources in SOURCES.md) build the model transformers
builds: the same parameter count (on the meta device, so even 671B costs nothing) and active count, the same KV
width per token, RoPE frequencies, cos/sin factor and softmax scale in every layer, and the same layer pattern
(windows, chunks, NoPE, MoE). `mlxm info` on such a config-only folder reports it, MTP modules included."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CONFIG_MAPPING, AutoModelForCausalLM

from app.info import _count, _kv_bytes, describe
from mlxmodels.config import ConfigError, read_config
from mlxmodels.families import build_spec
from mlxmodels.parts.rope import RoPE
from mlxmodels.spec import MLASpec, MoESpec
from tests.families.test_defaults import CONFIG_CLASS

DATA = Path(__file__).parent.parent / "data" / "configs"
FOLDERS = sorted(p.parent for p in DATA.glob("*/config.json"))
# Mistral and Mixtral hand config.sliding_window to every layer; the others keep a per-layer attribute
WINDOW_FROM_CONFIG = ("mistral", "mixtral")


def transformers_config(folder: Path):
    """The decoder config transformers reads from the same file. Llama 4 publishes `attn_temperature_tuning: 4`,
    which transformers 5's strict config refuses as a non-bool: it is handed over as the truth value it is."""
    raw = json.loads((folder / "config.json").read_text())
    for part in (raw, raw.get("text_config") or {}):
        if type(part.get("attn_temperature_tuning")) is int:
            part["attn_temperature_tuning"] = bool(part["attn_temperature_tuning"])
    model_type = CONFIG_CLASS.get(raw["model_type"], raw["model_type"])
    cfg = CONFIG_MAPPING[model_type].from_dict({**raw, "model_type": model_type})
    return cfg.text_config if "text_config" in cfg.sub_configs else cfg


@pytest.fixture(scope="module", params=FOLDERS, ids=[f.name for f in FOLDERS])
def pair(request):
    """(our spec, transformers' config, transformers' model on the meta device) for one real config."""
    folder = request.param
    _, spec = build_spec(read_config(folder))
    hf = transformers_config(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    return spec, hf, model


def test_folders_present():
    assert len(FOLDERS) >= 10, FOLDERS


def decoder_layers(model):
    body = model.model if hasattr(model, "model") else model.transformer
    return list(body.layers if hasattr(body, "layers") else body.h)


def attention(layer):
    return layer.self_attn if hasattr(layer, "self_attn") else layer.attn


def checkpoint_size(module) -> int:
    """Parameters plus persistent buffers (DeepSeek-V3's e_score_correction_bias): what a checkpoint stores.
    Tied weights are one parameter, counted once."""
    buffers = sum(b.numel() for m in module.modules() for name, b in m.named_buffers(recurse=False)
                  if name not in m._non_persistent_buffers_set)
    return sum(p.numel() for p in module.parameters()) + buffers


def routed_experts(hf) -> tuple:
    for key in ("n_routed_experts", "num_local_experts", "num_experts"):
        if getattr(hf, key, None):
            return getattr(hf, key), hf.num_experts_per_tok
    return None


def test_parameters(pair):
    """Total and active (routed experts at top_k / n_experts, as `mlxm info` counts them) equal transformers';
    transformers leaves MTP modules out, so ours are counted apart."""
    spec, hf, model = pair
    counts = _count(spec)
    total = active = checkpoint_size(model)
    for name, module in model.named_modules():
        if name.endswith(".experts"):
            n, (e, k) = checkpoint_size(module), routed_experts(hf)
            active -= n - n * k // e
    assert (counts["total"], counts["active"]) == (total, active)
    assert bool(counts["mtp"]) == bool(spec.mtp)


def test_kv_width_per_token(pair):
    """What each layer caches per token: K and V of every KV head, or MLA's latent and shared RoPE key."""
    spec, hf, model = pair
    theirs = []
    for layer in decoder_layers(model):
        a = attention(layer)
        if hasattr(a, "kv_a_proj_with_mqa"):
            theirs.append(a.kv_a_proj_with_mqa.out_features)
        elif hasattr(a, "k_proj"):
            theirs.append(a.k_proj.out_features + a.v_proj.out_features)
        else:  # GPT-2's fused c_attn: q, k, v of hidden each
            theirs.append(2 * a.c_attn.nf // 3)
    assert [_kv_bytes(layer.attn, 1) for layer in spec.layers] == theirs


def rotary(model, hf):
    """transformers' rotary embedding of this config, built for real on the CPU (the meta copy holds no values)."""
    body = getattr(model, "model", None)
    if not hasattr(body, "rotary_emb"):
        return None  # GPT-2: learned positions
    with torch.device("cpu"):
        return type(body.rotary_emb)(config=hf)


def test_rope_and_scale_per_layer(pair):
    spec, hf, model = pair
    rot = rotary(model, hf)
    for i, (ours, layer) in enumerate(zip(spec.layers, decoder_layers(model))):
        a = attention(layer)
        default = (ours.attn.qk_nope_head_dim + ours.attn.qk_rope_head_dim if isinstance(ours.attn, MLASpec)
                   else ours.attn.head_dim) ** -0.5
        assert (ours.attn.scale or default) == pytest.approx(a.scaling, rel=1e-12), f"layer {i} softmax scale"
        if rot is None or not getattr(a, "use_rope", True):
            assert ours.attn.rope is None, f"layer {i} rotates; transformers' does not"
            continue
        layer_type = hf.layer_types[i] if getattr(hf, "layer_types", None) else None
        kind = f"{layer_type}_" if hasattr(rot, f"{layer_type}_inv_freq") else ""  # Gemma 3: one per layer type
        inv_freq = getattr(rot, f"{kind}inv_freq").numpy()
        ours_rope = RoPE(ours.attn.rope)
        np.testing.assert_allclose(1 / np.array(ours_rope._freqs), inv_freq, rtol=1e-6, err_msg=f"layer {i}")
        assert ours_rope.mscale == pytest.approx(getattr(rot, f"{kind}attention_scaling"), rel=1e-6)


def test_layer_pattern(pair):
    """Per layer: sliding window, attention chunk, MoE or dense FFN."""
    spec, hf, model = pair
    for i, (ours, layer) in enumerate(zip(spec.layers, decoder_layers(model))):
        a = attention(layer)
        window = hf.sliding_window if hf.model_type in WINDOW_FROM_CONFIG else getattr(a, "sliding_window", None)
        chunk = hf.attention_chunk_size if getattr(hf, "layer_types", None) and \
            hf.layer_types[i] == "chunked_attention" else None
        moe = any(name.endswith("experts") for name, _ in layer.named_modules())
        assert (getattr(ours.attn, "window", None), getattr(ours.attn, "chunk", None)) == (window or None, chunk)
        assert isinstance(ours.ffn, MoESpec) == moe, f"layer {i}"
    assert len(spec.layers) == len(decoder_layers(model))


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_info_reports_config_only_folder(folder):
    """`mlxm info` on the bare config: its report, no warnings (numpy's included), MTP modules counted."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = describe(str(folder))
    assert report["params_total"] > 0 and report["kv_bytes_per_token"] > 0
    # MTP modules as DeepSeek's config announces them (transformers reads the key, though it builds none)
    assert bool(report["params_mtp"]) == bool(getattr(transformers_config(folder), "num_nextn_predict_layers", 0))


def test_info_cli_on_deepseek_v3():
    """The MTP module of DeepSeek-V3 shows in the report, and stderr stays empty."""
    run = subprocess.run([sys.executable, "-m", "app.cli", "info", "-m", str(DATA / "DeepSeek-V3")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert "671.03B total" in run.stdout and "in MTP modules" in run.stdout


def test_llama4_published_temperature_tuning_flag(tmp_path):
    """Llama 4's published configs say `attn_temperature_tuning: 4` (a number where transformers 5 declares a
    bool; vLLM issue #20581 quotes Scout's): accepted and read for its truth, it builds what the default builds."""
    folder = tmp_path / "scout"
    folder.mkdir()
    cfg = json.loads((DATA / "Llama-4-Scout-17B-16E-Instruct" / "config.json").read_text())
    cfg["text_config"]["attn_temperature_tuning"] = 4
    (folder / "config.json").write_text(json.dumps(cfg))
    _, published = build_spec(read_config(folder))
    _, default = build_spec(read_config(DATA / "Llama-4-Scout-17B-16E-Instruct"))
    assert published == default and published.layers[3].attn.temperature_tuning == (8192, 0.1)
    for bad in ("on", -1):
        cfg["text_config"]["attn_temperature_tuning"] = bad
        (folder / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ConfigError, match="attn_temperature_tuning is .*; expected true, false or a number"):
            read_config(folder)
