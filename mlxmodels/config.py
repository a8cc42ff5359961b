"""Reading Hugging Face `config.json` in both dialects: the older keys most Hub repos use
(`rope_theta`, `rope_scaling`, `sliding_window_pattern`, ...) and the ones transformers 5 writes
(`rope_parameters`, possibly one entry per layer type, `layer_types`)."""

import json
from pathlib import Path
from typing import Optional

from .spec import RopeSpec


class ModelError(ValueError):
    """A user-facing problem with a model folder; the message says what is wrong and what to do."""


class ConfigError(ModelError):
    """A config.json that cannot describe a model we can build."""


class HFConfig(dict):
    def require(self, key: str):
        if self.get(key) is None:
            raise ConfigError(
                f"config.json is missing {key!r}, which a {self.get('model_type', 'model')!r} model needs; "
                "add it (see the model card) or re-export the config with transformers"
            )
        return self[key]

    def head_dim(self) -> int:
        return self.get("head_dim") or self.require("hidden_size") // self.require("num_attention_heads")

    def layer_types(self, default: Optional[list] = None) -> list:
        n = self.require("num_hidden_layers")
        types = self.get("layer_types") or default or ["full_attention"] * n
        if len(types) < n:
            raise ConfigError(f"config.json has {len(types)} layer_types for {n} layers; give one per layer")
        return list(types[:n])

    def rope_parameters(self, layer_type: Optional[str] = None, legacy_base: Optional[float] = None) -> dict:
        """One RoPE parameter dict (with rope_type and rope_theta) for a layer type, whichever dialect."""
        params = self.get("rope_parameters")
        if params:
            if layer_type in params and isinstance(params[layer_type], dict):
                params = params[layer_type]
            params = dict(params)
            params.setdefault("rope_theta", self.get("rope_theta", 10000.0))
        else:
            params = dict(self.get("rope_scaling") or {})
            params["rope_theta"] = legacy_base if legacy_base is not None else self.get("rope_theta", 10000.0)
        params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
        params.pop("type", None)
        return params

    def rope(self, layer_type: Optional[str] = None, legacy_base: Optional[float] = None, dims: Optional[int] = None):
        p = self.rope_parameters(layer_type, legacy_base)
        head_dim = self.head_dim()
        if dims is None:
            dims = int(head_dim * p.get("partial_rotary_factor", self.get("partial_rotary_factor", 1.0)))
        kind = p.pop("rope_type")
        base = float(p.pop("rope_theta"))
        p.pop("partial_rotary_factor", None)
        return RopeSpec(
            dims=dims,
            base=base,
            kind=kind,
            params=tuple(sorted(p.items())),
            max_position_embeddings=self.get("max_position_embeddings", 2048),
        )


def read_config(folder: Path) -> HFConfig:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{folder} has no config.json; point at a Hugging Face model folder or Hub id")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); re-download or re-export it") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    # Multimodal wrappers (Gemma 3, Llama 4) keep the decoder under text_config.
    if "text_config" in cfg and "num_hidden_layers" not in cfg:
        text = dict(cfg["text_config"])
        for k in ("quantization", "quantization_config", "tie_word_embeddings"):
            if k in cfg and k not in text:
                text[k] = cfg[k]
        cfg = text
    return HFConfig(cfg)
