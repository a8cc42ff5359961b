"""Experts mode: every MoE layer's routed experts partitioned across the ranks, everything else as tensor mode.

Rank r of N holds experts [r*E/N, (r+1)*E/N) of every MoE layer (MTP modules' included): its slice of the stacked
(E, out, in) switch_mlp tensors along axis 0, which cuts packed codes, scales and biases alike. The router is whole
on every rank and sees the same input, so every rank picks the same experts for every token; each rank computes
only the (token, expert) pairs whose expert it holds, leaves the others zero, and one all_sum per MoE layer adds
the ranks' parts. The shared experts are split as tensor mode splits a dense FFN (gate/up rows, down columns), so
their partial output joins the same all_sum.

Which pairs run here, two ways, each where it is cheap:
- regroup (steps of more than compiled.MAX_TOKENS tokens per sequence: prefill chunks, eager): the rank's pairs are
  gathered and run alone, so each rank does 1/N of the expert FLOPs. It costs one wait per MoE layer to learn how
  many pairs are here (a data-dependent shape), amortised over the chunk's tokens.
- mask (decode and speculative verification, which run compiled, where shapes cannot depend on data): every pair
  runs, the pairs of other ranks' experts pointed at this rank's first expert, and their outputs are dropped. The
  distinct expert weights a step reads grow by at most that one expert, which is what a decode step on a Mac is
  bound by; the redirected pairs' FLOPs (k - k/N rows per token) are wasted.
scripts/bench_experts_split.py times both on one rank's half of a layer: on a CPU, bound by FLOPs, regrouped pairs
take about half the whole layer's time and masked ones about all of it.

Everything else (attention heads, dense FFN layers, the embedding and head over the vocabulary) is tensor mode's:
this layout is TensorLayout with its three expert hooks overridden.
"""

from dataclasses import replace

import mlx.core as mx

from ..parts.compiled import use_compiled
from ..parts.experts import SwitchMLP
from ..spec import MoESpec
from .layout import ParallelError, Slice
from .sharded import SummedMoE
from .tensor import TensorLayout


class LocalExperts(SwitchMLP):
    """Experts [first, first + n) of the whole layer's E, called with the router's whole-layer indices; pairs whose
    expert lives on another rank come out zero. `regroup` is set by the owning MoE before each call (see above)."""

    def __init__(self, hidden: int, inter: int, n: int, act: str, first: int):
        super().__init__(hidden, inter, n, act)
        self._first, self._n = first, n
        self.regroup = False

    def __call__(self, x, idx):
        """x (N, D) or (N, k, D), idx (N, k) of the whole layer -> (N, k, D), zero where the expert is elsewhere."""
        local = idx - self._first  # (N, k)
        here = (local >= 0) & (local < self._n)
        if self.regroup:
            return self._regrouped(x, local, here)
        y = super().__call__(x, mx.where(here, local, 0))  # (N, k, D)
        return mx.where(here[..., None], y, mx.zeros((), dtype=y.dtype))

    def _regrouped(self, x, local, here):
        N, k = local.shape
        flat = here.reshape(-1)  # (N*k,)
        count = flat.sum().item()  # the one wait: how many pairs run here
        if count == 0:
            return mx.zeros((N, k, x.shape[-1]), dtype=x.dtype)  # experts map D -> D
        pairs = mx.argsort(mx.logical_not(flat).astype(mx.uint8))[:count]  # (count,) indices of the pairs here
        rows = x[pairs // k] if x.ndim == 2 else x.reshape(N * k, -1)[pairs]  # (count, D)
        y = super().__call__(rows, local.reshape(-1)[pairs][:, None])[:, 0]  # (count, D)
        out = mx.zeros((N * k, y.shape[-1]), dtype=y.dtype).at[pairs].add(y)
        return out.reshape(N, k, -1)


class PartitionedMoE(SummedMoE):
    """A MoE layer with this rank's LocalExperts and its part of the shared experts (`spec.shared_hidden` is already
    the rank's share); SummedMoE's one all_sum of the output, which is linear in both parts, makes it whole."""

    def __init__(self, hidden: int, spec: MoESpec, first: int, n: int, all_sum):
        super().__init__(hidden, spec, all_sum)  # its whole-E SwitchMLP is lazy: replaced before anything reads it
        setattr(self, spec.experts_name, LocalExperts(hidden, spec.hidden, n, spec.act, first))

    def __call__(self, x):
        # x (B, T, D): steps the block runs compiled must mask; longer (eager) steps regroup
        self[self.spec.experts_name].regroup = not use_compiled(x.shape[1])
        return super().__call__(x)


class ExpertsLayout(TensorLayout):
    """Tensor mode but for the routed experts: whole experts partitioned, not every expert's intermediate split."""

    name = "experts"

    def __init__(self, spec, group, budgets=None):
        if not any(isinstance(layer.ffn, MoESpec) for layer in spec.layers + spec.mtp):
            raise ParallelError("--parallel experts splits MoE layers and this model has none; use --parallel "
                                "tensor or pipeline")
        super().__init__(spec, group, budgets)

    def local_moe(self, moe: MoESpec, index: int) -> MoESpec:
        """The router and each routed expert whole (n_experts stays E: the router scores them all); shared experts
        split as a dense FFN."""
        if moe.n_experts % self.size:
            raise ParallelError(f"layer {index}: {moe.n_experts} routed experts do not divide over {self.size} ranks; "
                                f"use a number of ranks that divides {moe.n_experts}, or --parallel tensor or pipeline")
        shared = moe.shared_hidden and self._part(moe.shared_hidden, f"layer {index}: shared expert intermediate "
                                                                       f"{moe.shared_hidden}")
        return replace(moe, shared_hidden=shared)

    def expert_cut(self, moe: MoESpec, proj: str, leaf: str) -> Slice:
        return Slice.part(0, self.rank, self.size)  # (E, out, in) and its scales/biases: this rank's experts

    def moe_module(self, hidden: int, moe: MoESpec):
        n = moe.n_experts // self.size
        return PartitionedMoE(hidden, moe, self.rank * n, n, self.all_sum)
