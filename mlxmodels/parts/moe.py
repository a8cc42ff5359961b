"""Mixture of experts: a router picks top-k experts per token; stacked experts run them; shared experts always run.

Routers differ only in a few switches of `MoESpec` (see `route`): softmax or sigmoid scores, renormalising the
chosen weights, group-limited choice (DeepSeek), a correction bias that steers choice but not weights
(DeepSeek-V3), a final scaling, and whether the weight scales the expert's input (Llama 4) or output.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..spec import FFNSpec, MoESpec
from .experts import SwitchMLP
from .ffn import MLP


def top_groups(group_scores, k: int):
    """(N, G) -> bool (N, G) marking the k best groups; ties go to the lower index, so routing is deterministic
    (torch.topk leaves tie order unspecified)."""
    s = group_scores[:, :, None]  # candidate g
    t = group_scores[:, None, :]  # competitor h
    lower = mx.array(np.tri(group_scores.shape[-1], k=-1, dtype=bool))  # [g, h]: h < g (a constant, not ops)
    beaten_by = ((t > s) | ((t == s) & lower[None])).sum(axis=-1)  # (N, G)
    return beaten_by < k


def route(logits, spec: MoESpec, correction_bias=None):
    """Router logits (N, E) -> (weights (N, k) float32, expert indices (N, k))."""
    logits = logits.astype(mx.float32)
    scores = mx.softmax(logits, axis=-1) if spec.score == "softmax" else mx.sigmoid(logits)
    choice = scores + correction_bias if correction_bias is not None else scores
    if spec.n_group and spec.topk_group and spec.topk_group < spec.n_group:
        N, E = choice.shape
        grouped = choice.reshape(N, spec.n_group, E // spec.n_group)
        if spec.group_score == "top2":
            group_scores = mx.sort(grouped, axis=-1)[..., -2:].sum(axis=-1)
        else:
            group_scores = grouped.max(axis=-1)
        keep = top_groups(group_scores, spec.topk_group)  # (N, G)
        choice = mx.where(keep[:, :, None], grouped, -mx.inf).reshape(N, E)
    idx = mx.argpartition(-choice, kth=spec.top_k - 1, axis=-1)[:, : spec.top_k]  # (N, k), unordered
    weights = mx.take_along_axis(scores, idx, axis=-1)
    if spec.norm_topk:
        weights = weights / (weights.sum(axis=-1, keepdims=True) + 1e-20)
    return weights * spec.scaling, idx


class Router(nn.Module):
    def __init__(self, hidden: int, spec: MoESpec):
        super().__init__()
        self.weight = mx.zeros((spec.n_experts, hidden))
        if spec.router_bias:
            self.bias = mx.zeros((spec.n_experts,))
        if spec.correction_bias:
            self.e_score_correction_bias = mx.zeros((spec.n_experts,))

    def __call__(self, x):
        # float32 like the reference routers: near-ties decide which experts run
        logits = x.astype(mx.float32) @ self.weight.astype(mx.float32).T
        return logits + self["bias"].astype(mx.float32) if "bias" in self else logits


class MoE(nn.Module):
    def __init__(self, hidden: int, spec: MoESpec):
        super().__init__()
        self.spec = spec
        setattr(self, spec.router_name, Router(hidden, spec))
        setattr(self, spec.experts_name, SwitchMLP(hidden, spec.hidden, spec.n_experts, spec.act))
        if spec.shared_hidden:
            setattr(self, spec.shared_name, MLP(hidden, FFNSpec(spec.shared_hidden, act=spec.act)))
            if spec.shared_gate:
                self.shared_expert_gate = nn.Linear(hidden, 1, bias=False)

    def __call__(self, x):
        s = self.spec
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, D)
        router = self[s.router_name]
        weights, idx = route(router(x), s, router.get("e_score_correction_bias"))
        weights = weights.astype(x.dtype)
        experts = self[s.experts_name]
        if s.weight_input:
            y = experts(x[:, None, :] * weights[..., None], idx).sum(axis=1)
        else:
            y = (experts(x, idx) * weights[..., None]).sum(axis=1)
        if s.shared_hidden:
            shared = self[s.shared_name](x)
            if s.shared_gate:
                shared = mx.sigmoid(self.shared_expert_gate(x)) * shared
            y = y + shared
        return y.reshape(shape)
