"""REGISTRY: Hugging Face `model_type` -> adapter module.

An adapter has `DEFAULTS` (for each key it reads, the value transformers' config class for its model_type takes
when config.json omits it: HFConfig falls back to them), `spec(cfg) -> ModelSpec` and optionally
`map_weights(weights, cfg) -> weights` for checkpoints whose tensors differ from our module names by more than the
identity.
"""

from types import ModuleType

from ..config import ConfigError
from . import (deepseek_v2, deepseek_v3, gemma2, gemma3, gpt2, llama, llama4, mistral, mixtral, olmo2, qwen2, qwen2_moe,
               qwen3, qwen3_moe, smollm3)

REGISTRY: dict[str, ModuleType] = {
    "llama": llama,
    "mistral": mistral,
    "qwen2": qwen2,
    "qwen3": qwen3,
    "gemma2": gemma2,
    "gemma3_text": gemma3,
    "gemma3": gemma3,  # the multimodal wrapper; its text_config is read
    "olmo2": olmo2,
    "smollm3": smollm3,
    "gpt2": gpt2,
    "mixtral": mixtral,
    "qwen2_moe": qwen2_moe,
    "qwen3_moe": qwen3_moe,
    "deepseek_v2": deepseek_v2,
    "deepseek_v3": deepseek_v3,
    "kimi_k2": deepseek_v3,
    "llama4_text": llama4,
    "llama4": llama4,  # the multimodal wrapper; its text_config and language_model weights are read
}


def defaults_for(model_type) -> dict:
    """The family defaults of a model_type ({} for one we do not support: get_adapter refuses it)."""
    adapter = REGISTRY.get(model_type) if isinstance(model_type, str) else None
    return getattr(adapter, "DEFAULTS", {})


def get_adapter(model_type) -> ModuleType:
    if model_type not in REGISTRY:
        raise ConfigError(
            f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(REGISTRY))}"
        )
    return REGISTRY[model_type]


def build_spec(cfg, where: str = "config.json"):
    """config -> (adapter, ModelSpec), the spec's size relations checked: what load, info and convert all build."""
    from ..config_check import check_spec

    adapter = get_adapter(cfg.get("model_type"))
    spec = adapter.spec(cfg)
    check_spec(spec, where)
    return adapter, spec
