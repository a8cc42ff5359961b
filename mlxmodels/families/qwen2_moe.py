"""Qwen2-MoE = Qwen3-MoE's routing on Qwen2 attention (q/k/v bias, no QK-norm), plus a shared expert whose
output is scaled by a sigmoid gate."""

from ..config import HFConfig
from . import qwen2, qwen3_moe

map_weights = qwen3_moe.map_weights


def spec(cfg: HFConfig):
    shared = qwen3_moe.moe(cfg, shared_hidden=cfg.require("shared_expert_intermediate_size"), shared_gate=True,
                           shared_name="shared_expert")
    return qwen3_moe.spec(cfg, base=qwen2.spec(cfg), moe_spec=shared)
