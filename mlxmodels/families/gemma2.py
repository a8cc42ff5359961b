"""Gemma 2 = Gemma 3, except: no QK-norm, attention logits soft-capped, one RoPE for every layer, 1 local : 1 global."""

from dataclasses import replace

from ..config import HFConfig
from . import gemma3, llama

# transformers' Gemma2Config
DEFAULTS = dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                num_attention_heads=8, num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
                max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False,
                query_pre_attn_scalar=256, sliding_window=4096, final_logit_softcapping=30.0,
                attn_logit_softcapping=50.0, rope_theta=10000.0)


def spec(cfg: HFConfig):
    rope, cap = cfg.rope(), cfg.get("attn_logit_softcapping")
    base = gemma3.spec(cfg, every=2, layer_rope=lambda t: rope)
    return llama.map_attn(base, lambda i, a: replace(a, qk_norm=None, softcap=cap))
