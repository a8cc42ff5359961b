"""Mistral = Llama, except every layer attends over a sliding window of `sliding_window` tokens (when set)."""

from ..config import HFConfig
from . import llama


def spec(cfg: HFConfig):
    window = cfg.get("sliding_window")
    types = ["sliding_attention" if window else "full_attention"] * cfg.require("num_hidden_layers")
    return llama.spec(cfg, default_layer_types=types)
