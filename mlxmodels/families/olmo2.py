"""OLMo 2 = Llama, except norms after each sublayer (no input norm) and RMS QK-norm over the whole projection."""

from dataclasses import replace

from ..config import HFConfig
from . import llama

# transformers' Olmo2Config
DEFAULTS = dict(vocab_size=50304, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-5,
                tie_word_embeddings=False, attention_bias=False, rope_theta=10000.0)


def spec(cfg: HFConfig):
    base = llama.spec(cfg)
    base = llama.map_attn(base, lambda i, a: replace(a, qk_norm="proj"))
    return base.with_layers(replace(l, placement="post") for l in base.layers)
