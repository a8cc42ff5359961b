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
  runs, the pairs of other ranks' experts pointed at this rank's first expert, and their outputs are dropped. A
  decode step is bound by weight reads, not FLOPs, and the redirected pairs read at most one expert more than the
  single-process step reads; their FLOPs (k - k/N rows per token) are wasted.

Attention, dense FFN layers, the embedding and the head are placed and built by the base layout (tensor mode).
"""

import re
from dataclasses import replace

import mlx.core as mx

from ..parts.compiled import use_compiled
from ..parts.experts import SwitchMLP
from ..parts.moe import MoE
from ..spec import MoESpec
from .layout import Layout, ParallelError, Slice

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


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


class PartitionedMoE(MoE):
    """A MoE layer with this rank's LocalExperts and its part of the shared experts (`spec.shared_hidden` is already
    the rank's share); one all_sum of the layer's output, which is linear in both parts, makes it whole."""

    def __init__(self, hidden: int, spec: MoESpec, first: int, n: int, all_sum):
        super().__init__(hidden, spec)  # its whole-E SwitchMLP is lazy: replaced here before anything evaluates it
        setattr(self, spec.experts_name, LocalExperts(hidden, spec.hidden, n, spec.act, first))
        self._all_sum = all_sum

    def __call__(self, x):
        # x (B, T, D): steps the block runs compiled must mask; longer (eager) steps regroup
        self[self.spec.experts_name].regroup = not use_compiled(x.shape[1])
        return self._all_sum(super().__call__(x))


class Replicated(Layout):
    """Every tensor whole on every rank (stands in for tensor mode as the base of experts mode)."""

    name = "replicated"

    def place(self, name, shape):
        return name, None

    def build(self):
        from ..decoder import Decoder

        return Decoder(self.local_spec)


class ExpertsLayout(Layout):
    name = "experts"
    base = Replicated  # places and builds every tensor that is not a MoE layer's routed or shared experts

    def __init__(self, spec, group, budgets=None):
        super().__init__(spec, group, budgets)
        layers = spec.layers + spec.mtp  # MTP modules are stored after the main layers: their indices continue
        self.moe = {i: layer for i, layer in enumerate(layers) if isinstance(layer.ffn, MoESpec)}
        if not self.moe:
            raise ParallelError("--parallel experts splits MoE layers and this model has none; use --parallel tensor "
                                "or pipeline")
        for layer in self.moe.values():
            e, shared = layer.ffn.n_experts, layer.ffn.shared_hidden
            if e % self.size:
                raise ParallelError(f"{e} routed experts do not divide over {self.size} ranks; use a group size that "
                                    f"divides {e}, or --parallel tensor or pipeline")
            if shared and shared % self.size:
                raise ParallelError(f"the shared experts' {shared} intermediate features do not divide over "
                                    f"{self.size} ranks; use --parallel tensor or pipeline")
        self.base_layout = self.base(spec, group, budgets)
        local = list(self.base_layout.local_spec.layers + self.base_layout.local_spec.mtp)
        for i, layer in self.moe.items():
            ffn = layer.ffn
            local[i] = replace(local[i], ffn=replace(ffn, shared_hidden=ffn.shared_hidden and ffn.shared_hidden // self.size))
        n = spec.num_layers
        self.local_spec = replace(self.base_layout.local_spec, layers=tuple(local[:n]), mtp=tuple(local[n:]))

    def _experts(self, i: int) -> tuple:
        """Layer i's first expert here and how many."""
        per = self.moe[i].ffn.n_experts // self.size
        return self.rank * per, per

    def place(self, name, shape):
        m = _LAYER.match(name)
        layer = self.moe.get(int(m.group(1))) if m else None
        if layer is not None:
            rest = name[m.end():]
            ffn = layer.ffn
            if rest.startswith(f"{layer.ffn_name}.{ffn.experts_name}."):
                return name, Slice.part(0, self.rank, self.size)  # (E, out, in): this rank's experts
            if ffn.shared_hidden and rest.startswith(f"{layer.ffn_name}.{ffn.shared_name}."):
                proj = rest.split(".")[2]  # gate/up: rows of the intermediate; down: its columns
                return name, Slice.part(1 if proj == "down_proj" else 0, self.rank, self.size)
        return self.base_layout.place(name, shape)

    def build(self):
        model = self.base_layout.build()
        group = self.group

        def all_sum(x):
            return mx.distributed.all_sum(x, group=group)

        local = self.local_spec.layers + self.local_spec.mtp
        for i, layer in self.moe.items():
            first, n = self._experts(i)
            setattr(model.model.layers[i], layer.ffn_name,
                    PartitionedMoE(self.spec.hidden_size, local[i].ffn, first, n, all_sum))
        model.spec = self.local_spec
        return model
