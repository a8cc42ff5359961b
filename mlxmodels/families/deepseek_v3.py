"""DeepSeek-V3 (and Kimi K2) = DeepSeek-V2, except routing is `noaux_tc`: sigmoid scores, a correction bias that
steers the choice but not the weights, groups ranked by the sum of their top-2 scores, weights renormalised
(`norm_topk_prob`) then scaled; MTP modules may follow the last layer (loaded by mlxmodels.mtp)."""

from dataclasses import replace

from ..config import HFConfig
from . import deepseek_v2

map_weights = deepseek_v2.map_weights


def spec(cfg: HFConfig):
    moe = replace(deepseek_v2.moe(HFConfig(cfg, topk_method="noaux_tc")), score="sigmoid", group_score="top2",
                  correction_bias=True, norm_topk=bool(cfg.get("norm_topk_prob", True)))
    return deepseek_v2.spec(cfg, moe)
