"""Mistral = Llama, except every layer attends over a sliding window of `sliding_window` tokens (4096 when
config.json omits the key, as transformers reads it; null: no window)."""

from ..config import HFConfig
from . import llama

# transformers' MistralConfig (head_dim: hidden / heads when absent)
DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, hidden_act="silu", max_position_embeddings=131072,
                rms_norm_eps=1e-6, tie_word_embeddings=False, sliding_window=4096, rope_theta=10000.0)


def spec(cfg: HFConfig):
    window = cfg.get("sliding_window")
    types = ["sliding_attention" if window else "full_attention"] * cfg.require("num_hidden_layers")
    return llama.spec(cfg, default_layer_types=types)
