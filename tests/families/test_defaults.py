"""Each family's defaults are transformers' defaults, so a transformers upgrade that moves one fails here instead of
in a user's model. For every supported model_type (the text_config of the multimodal wrappers): every `DEFAULTS`
entry equals the value transformers' config class takes when config.json omits the key; every key the adapter
reads without a default is one transformers has no value for either; and a config.json naming nothing but its
model_type builds the same spec as transformers' default config written out in full."""

import dataclasses

import pytest
from transformers import AutoConfig

from mlxmodels.config import ConfigError, HFConfig
from mlxmodels.families import REGISTRY, build_spec, defaults_for

# model_types transformers has no class for, and the class that reads their configs
CONFIG_CLASS = {"kimi_k2": "deepseek_v3"}  # Kimi K2 ships DeepSeek-V3's configuration code
# keys transformers leaves at None although no model can be built without them: config.json must give them
REQUIRED = {"deepseek_v2": {"num_experts_per_tok": 6}}
# keys of the older dialect that transformers 5 keeps elsewhere, and where
RENAMED = {
    "rope_theta": lambda c: rope_of(c, "full_attention")["rope_theta"],
    "rope_local_base_freq": lambda c: rope_of(c, "sliding_attention")["rope_theta"],
    "sliding_window_pattern": lambda c: c._sliding_window_pattern,
}
ABSENT = object()


def rope_of(hf, layer_type: str) -> dict:
    params = hf.rope_parameters
    return params.get(layer_type, params)


def hf_config(model_type: str):
    """transformers' default config for a model_type (the decoder's, for multimodal wrappers)."""
    cfg = AutoConfig.for_model(CONFIG_CLASS.get(model_type, model_type))
    return cfg.text_config if "text_config" in cfg.sub_configs else cfg


def names(hf, key: str) -> set:
    """A key and the aliases transformers' attribute_map gives it, either way round."""
    amap = type(hf).attribute_map
    return {key} | {a for a, t in amap.items() if t == key} | {t for a, t in amap.items() if a == key}


def hf_default(hf, key: str):
    """The value transformers' config class takes for `key` when config.json omits it (before __post_init__
    rewrites it from other keys); ABSENT for a key the class does not know."""
    fields = {f.name: f for f in dataclasses.fields(hf)}
    for name in names(hf, key):
        if name in fields:
            f = fields[name]
            return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return RENAMED[key](hf) if key in RENAMED else ABSENT


MODEL_TYPES = sorted(REGISTRY)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_defaults_are_transformers_defaults(model_type):
    hf = hf_config(model_type)
    wrong = {k: (v, hf_default(hf, k)) for k, v in defaults_for(model_type).items() if hf_default(hf, k) != v}
    assert not wrong, f"{model_type}: ours vs transformers' {wrong}"


def keys_read(cfg: dict, monkeypatch) -> set:
    """Every key the adapter asks the config for while building its spec."""
    seen = set()
    for method in ("get", "require", "__getitem__"):
        original = getattr(HFConfig, method)

        def recording(self, key, *args, _original=original):
            seen.add(key)
            return _original(self, key, *args)

        monkeypatch.setattr(HFConfig, method, recording)
    build_spec(HFConfig(cfg))
    monkeypatch.undo()
    return seen


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_no_default_hides_in_the_code(model_type, monkeypatch):
    """A key read without a DEFAULTS entry falls back to nothing transformers knows a value for."""
    hf = hf_config(model_type)
    given = dict(REQUIRED.get(model_type, {}), model_type=model_type)
    read = keys_read(given, monkeypatch) | keys_read({**hf.to_dict(), **given}, monkeypatch)
    ours = defaults_for(model_type)
    hidden = {k: hf_default(hf, k) for k in read - set(given) if not names(hf, k) & set(ours)}
    hidden = {k: v for k, v in hidden.items() if v is not ABSENT and v is not None}
    assert not hidden, f"{model_type} reads these without a default transformers gives them: {hidden}"


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_bare_config_builds_transformers_default_model(model_type):
    """Only the model_type given: the spec equals the one built from transformers' default config in full
    (its derived keys too: layer_types, rope_parameters, head_dim, no_rope_layers, moe_layers)."""
    given = dict(REQUIRED.get(model_type, {}), model_type=model_type)
    _, bare = build_spec(HFConfig(given))
    _, full = build_spec(HFConfig({**hf_config(model_type).to_dict(), **given}))
    assert bare == full


def test_absent_differs_from_null():
    """Absent takes transformers' default; null means none for an optional key, and the default for one a model
    cannot do without."""
    absent = HFConfig(model_type="deepseek_v2")
    null = HFConfig(model_type="deepseek_v2", q_lora_rank=None, rms_norm_eps=None)
    assert absent.get("q_lora_rank") == 1536 and null.get("q_lora_rank") is None
    assert null.require("rms_norm_eps") == absent.require("rms_norm_eps") == 1e-6
    assert "q_lora_rank" not in absent and dict(null) == dict(model_type="deepseek_v2", q_lora_rank=None,
                                                            rms_norm_eps=None)


def test_unknown_family_has_no_defaults():
    assert defaults_for("not_a_model") == {} and defaults_for(None) == {} and defaults_for(["llama"]) == {}
    assert HFConfig(model_type="not_a_model").get("hidden_size") is None


def test_key_without_any_default_is_named():
    """Where transformers has no value either (DeepSeek-V2's top-k), the one-line error names the key."""
    with pytest.raises(ConfigError, match="missing 'num_experts_per_tok', which a 'deepseek_v2' model needs"):
        build_spec(HFConfig(model_type="deepseek_v2"))
