"""Reading Hugging Face `config.json` in both dialects: the older keys most Hub repos use
(`rope_theta`, `rope_scaling`, `sliding_window_pattern`, ...) and the ones transformers 5 writes
(`rope_parameters`, possibly one entry per layer type, `layer_types`)."""

from pathlib import Path
from typing import Optional

from .config_check import GENERATION_KEYS, KEYS, TOKENIZER_KEYS, ConfigError, check_config, check_keys
from .errors import ModelError  # noqa: F401  (re-exported: callers import it from here)
from .spec import RopeSpec


class HFConfig(dict):
    """A config.json as written, read through its family's defaults: a key the file does not name takes the value
    transformers' config class for that `model_type` gives it (the adapter module's `DEFAULTS`), never Llama's.
    `in`, iteration and `dict(cfg)` see the file alone; `get`, `[]` and `require` see the defaults too. A key the
    file sets to null stays None for `get` (null means "none" for optional keys: `q_lora_rank`, `sliding_window`);
    `require` reads such a null as absent."""

    @property
    def defaults(self) -> dict:
        from .families import defaults_for

        return defaults_for(dict.get(self, "model_type"))

    def __getitem__(self, key):
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        defaults = self.defaults
        if key in defaults:
            return defaults[key]
        raise KeyError(key)

    def get(self, key, fallback=None):
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        return self.defaults.get(key, fallback)

    def require(self, key: str):
        value = self.get(key)
        if value is None:
            value = self.defaults.get(key)
        if value is None:
            raise ConfigError(
                f"config.json is missing {key!r}, which a {self.get('model_type', 'model')!r} model needs; "
                "add it (see the model card) or re-export the config with transformers"
            )
        return value

    def head_dim(self) -> int:
        if self.get("head_dim"):
            return self["head_dim"]
        hidden, heads = self.require("hidden_size"), self.require("num_attention_heads")
        if hidden % heads:
            raise ConfigError(f"config.json: hidden_size {hidden} is not divisible by num_attention_heads {heads} "
                              "and there is no head_dim; give head_dim or fix the sizes")
        return hidden // heads

    def layer_types(self, default: Optional[list] = None) -> list:
        n = self.require("num_hidden_layers")
        types = self.get("layer_types") or default or ["full_attention"] * n
        if len(types) < n:
            raise ConfigError(f"config.json has {len(types)} layer_types for {n} layers; give one per layer")
        return list(types[:n])

    def rope_parameters(self, layer_type: Optional[str] = None, theta: Optional[float] = None) -> dict:
        """One RoPE parameter dict (with rope_type and rope_theta) for a layer type, whichever dialect, completed
        as transformers completes it: `theta` (default `rope_theta`) where the dict names no base, and the trained
        length of the scalings that need one (llama3, yarn) from max_position_embeddings."""
        params = self.get("rope_parameters")
        if params:
            if layer_type in params and isinstance(params[layer_type], dict):
                params = params[layer_type]
            params = dict(params)
        else:
            params = dict(self.get("rope_scaling") or {}, rope_theta=None)
        if params.get("rope_theta") is None:
            params["rope_theta"] = self.require("rope_theta") if theta is None else theta
        params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
        params.pop("type", None)
        if params["rope_type"] in ("llama3", "yarn"):
            params.setdefault("original_max_position_embeddings", self.require("max_position_embeddings"))
        return params

    def rope(self, layer_type: Optional[str] = None, theta: Optional[float] = None, dims: Optional[int] = None):
        p = self.rope_parameters(layer_type, theta)
        head_dim = self.head_dim()
        if dims is None:
            dims = int(head_dim * p.get("partial_rotary_factor", self.get("partial_rotary_factor") or 1.0))
        kind = p.pop("rope_type")
        base = float(p.pop("rope_theta"))
        p.pop("partial_rotary_factor", None)
        return RopeSpec(
            dims=dims,
            base=base,
            kind=kind,
            params=tuple(sorted(p.items())),
            max_position_embeddings=self.require("max_position_embeddings"),
        )


def read_config(folder: Path) -> HFConfig:
    """config.json, read through the folder's checks and validated (types, ranges) before any adapter sees it."""
    from .formats import folder as files

    if not files.exists(folder, "config.json"):
        raise ConfigError(f"{folder} has no config.json; point at a Hugging Face model folder or Hub id")
    path = files.member(folder, "config.json")
    cfg = files.read_json(path, limit=16 << 20)
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    check_config(cfg, str(path))
    # Multimodal wrappers (Gemma 3, Llama 4) keep the decoder under text_config.
    if "text_config" in cfg and "num_hidden_layers" not in cfg:
        if not isinstance(cfg["text_config"], dict):
            raise ConfigError(f"{path}: text_config is {type(cfg['text_config']).__name__}; expected an object")
        check_config(cfg["text_config"], str(path), "text_config.")
        text = dict(cfg["text_config"])
        text.setdefault("model_type", cfg.get("model_type"))  # the wrapper's adapter reads its text config
        for k in ("quantization", "quantization_config", "tie_word_embeddings"):
            if k in cfg and k not in text:
                text[k] = cfg[k]
        cfg = text
    return HFConfig(cfg)


# What each JSON file of a folder may hold, checked before use.
SIDE_RULES = {"tokenizer_config.json": TOKENIZER_KEYS, "special_tokens_map.json": TOKENIZER_KEYS,
              "chat_template.json": TOKENIZER_KEYS, "generation_config.json": GENERATION_KEYS, "config.json": KEYS}


def read_side_config(folder: Path, name: str) -> dict:
    """An optional JSON object of a model folder (generation_config.json, tokenizer_config.json, ...): {} when
    absent, else read through the folder's checks with its keys validated (SIDE_RULES)."""
    from .formats import folder as files

    if not files.exists(folder, name):
        return {}
    path = files.member(folder, name)
    data = files.read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} should hold a JSON object, not {type(data).__name__}; re-download it")
    check_keys(data, SIDE_RULES.get(name, {}), str(path))
    return data
