"""DeepSeek-V3 (and Kimi K2) = DeepSeek-V2, except routing is `noaux_tc`: sigmoid scores, a correction bias that
steers the choice but not the weights, groups ranked by the sum of their top-2 scores, weights renormalised
(`norm_topk_prob`) then scaled; MTP modules may follow the last layer (loaded by mlxmodels.mtp)."""

from dataclasses import replace

from ..config import HFConfig
from . import deepseek_v2

map_weights = deepseek_v2.map_weights

# transformers' DeepseekV3Config (num_nextn_predict_layers: its num_mtp_layers); Kimi K2 reads the same
DEFAULTS = dict(vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128, n_shared_experts=1,
                n_routed_experts=256, routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536,
                qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128, n_group=8, topk_group=4,
                num_experts_per_tok=8, first_k_dense_replace=3, norm_topk_prob=True, hidden_act="silu",
                max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False, rope_interleave=True,
                attention_bias=False, num_nextn_predict_layers=1, rope_theta=10000.0)


def spec(cfg: HFConfig):
    moe = replace(deepseek_v2.moe(HFConfig(cfg, topk_method="noaux_tc")), score="sigmoid", group_score="top2",
                  correction_bias=True, norm_topk=bool(cfg.get("norm_topk_prob")))
    return deepseek_v2.spec(cfg, moe)
