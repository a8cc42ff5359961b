"""Pipeline mode: each rank holds a contiguous range of layers; the hidden state walks rank to rank.

Rank 0 embeds, rank r receives the hidden state from rank r - 1 (`recv_like`), runs its layers and sends to r + 1;
the last rank's final hidden state is then shared with every rank (an all_sum to which the others add zeros), so
`model.model` returns it everywhere and the generation loop runs unchanged on every rank. The head lives where its
weight already is: the last rank for an own `lm_head`, rank 0 for a tied one (it holds the table to embed), so no
rank holds the vocabulary twice; its logits are shared the same way. A vocabulary-split head would spread that
matrix, but it would need the embedding split too (tied heads) and bring nothing to the pipeline's one-at-a-time
stages. The MTP modules go with the last stage: rank 0 sends them the embeddings of the next tokens.

Ranges are sized by `budgets` (bytes each rank may hold): the split that minimises the largest share of a budget,
counting the embedding on rank 0 and the head and MTP modules where they live; equal budgets when None.

Collectives are lazy, and every rank must run the same ones in the same order. A rank that evaluates only its
caches (as chunked prefill does) would skip its send while the next rank waits on the receive, so each step's
last collective is tied into one array of the rank's caches: evaluating a cache or the output runs every
collective of the step. A receive depends on no array, so MLX may order it anywhere in a graph; each step
therefore first evaluates what its inputs still owe (lazy tokens, the caches' last step) on every rank, at the
same point of the program. That wait costs decode the overlap of building step n + 1 while step n runs.
"""

from fractions import Fraction

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..decoder import Body, Decoder, build_block
from ..parts.mtp import MTPBlock
from ..parts.norms import make_norm
from .layout import Layout, ParallelError

LAYER_PREFIX = "model.layers."


def parameter_count(module: nn.Module) -> int:
    # shapes only: the freshly built parameters are lazy and never computed
    return sum(a.size for _, a in tree_flatten(module.parameters()))


def layer_ranges(layer_sizes: list, first: int, last: int, budgets: list) -> list:
    """Contiguous [start, stop) per rank, each at least one layer, minimising max(load / budget), where a rank's
    load is its layers plus `first` (rank 0: embedding) or `last` (the last rank: head, MTP modules)."""
    n, count = len(budgets), len(layer_sizes)
    prefix = [0]
    for size in layer_sizes:
        prefix.append(prefix[-1] + size)

    def share(r, i, j):  # rank r holding layers [i, j), as a fraction of its budget
        extra = (first if r == 0 else 0) + (last if r == n - 1 else 0)
        return Fraction(prefix[j] - prefix[i] + extra) / Fraction(budgets[r])

    # best[r][j]: the smallest largest share when ranks 0..r hold layers [0, j); cut[r][j]: where rank r starts
    best = [{j: share(0, 0, j) for j in range(1, count - n + 2)}]
    cut = [{j: 0 for j in best[0]}]
    for r in range(1, n):
        best.append({}), cut.append({})
        for j in range(r + 1, count - n + r + 2):
            # among equal largest shares, the cut that leaves the two sides closest
            i = min(range(r, j), key=lambda i: (max(best[r - 1][i], share(r, i, j)),
                                                abs(best[r - 1][i] - share(r, i, j))))
            best[r][j], cut[r][j] = max(best[r - 1][i], share(r, i, j)), i
    stops = [count]
    for r in range(n - 1, 0, -1):
        stops.append(cut[r][stops[-1]])
    stops = stops[::-1]
    return [(stops[r - 1] if r else 0, stops[r]) for r in range(n)]


class PipelineLayout(Layout):
    name = "pipeline"

    def __init__(self, spec, group, budgets=None):
        super().__init__(spec, group, budgets)
        if spec.num_layers < self.size:
            raise ParallelError(f"--parallel pipeline gives every rank at least one layer, but the model has "
                                f"{spec.num_layers} layers for {self.size} ranks; use fewer ranks or --parallel tensor")
        budgets = [1] * self.size if budgets is None else list(budgets)
        if len(budgets) != self.size or any(not 0 < b < float("inf") for b in budgets):
            raise ParallelError(f"pipeline budgets {budgets} must be one positive byte count per rank "
                                f"({self.size} ranks)")
        self.head_rank = 0 if spec.tie_embeddings else self.size - 1
        self.ranges = layer_ranges(*self._sizes(), budgets)
        self.start, self.stop = self.ranges[self.rank]
        self.last = self.size - 1
        # this rank's layers; MTP kept whole so every rank builds the same MTP caches (empty off the last rank) and
        # walks the drafter's loop in step with it
        self.local_spec = spec.with_layers(spec.layers[self.start: self.stop])

    def _sizes(self):
        spec = self.spec
        table = spec.vocab_size * spec.hidden_size
        first = table + (spec.learned_positions or 0) * spec.hidden_size
        mtp = sum(parameter_count(build_block(spec.hidden_size, layer, MTPBlock)) for layer in spec.mtp)
        last = (0 if spec.tie_embeddings else table) + mtp
        layers = [parameter_count(build_block(spec.hidden_size, layer)) for layer in spec.layers]
        return layers, first, last

    def place(self, name, shape):
        if name.startswith(LAYER_PREFIX):
            index, rest = name[len(LAYER_PREFIX):].split(".", 1)
            i = int(index)
            if self.start <= i < self.stop:
                return f"{LAYER_PREFIX}{i - self.start}.{rest}", None
            if i >= self.spec.num_layers and self.rank == self.last:  # MTP module k after the local layers
                return f"{LAYER_PREFIX}{i - self.spec.num_layers + self.stop - self.start}.{rest}", None
            return None
        if name.startswith(("model.embed_tokens.", "model.embed_positions.")):
            return (name, None) if self.rank == 0 else None
        if name.startswith("lm_head."):
            return (name, None) if self.rank == self.head_rank else None
        if name.startswith("model.norm."):
            return name, None  # every rank: the last applies it, the others take the compute dtype from it
        raise ParallelError(f"--parallel pipeline does not know where tensor {name} goes")

    def build(self) -> nn.Module:
        return PipelineDecoder(self)


class Stage(Body):
    """This rank's part of the body: (embed | receive) -> its layers -> (send | final norm) -> shared hidden."""

    def __init__(self, layout: PipelineLayout):
        nn.Module.__init__(self)
        spec, local = layout.spec, layout.local_spec
        self.group, self.rank, self.size = layout.group, layout.rank, layout.size
        if self.rank == 0:
            self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
            if spec.learned_positions:
                self.embed_positions = nn.Embedding(spec.learned_positions, spec.hidden_size)
        mtp = spec.mtp if self.rank == self.size - 1 else ()
        self.layers = [build_block(spec.hidden_size, layer) for layer in local.layers] + [
            build_block(spec.hidden_size, layer, MTPBlock) for layer in mtp
        ]
        self._n_main = len(local.layers)
        self.norm = make_norm(spec.norm, spec.hidden_size)
        self._embed_scale = spec.embed_scale
        self._hidden = spec.hidden_size

    def __call__(self, input_ids, cache):
        B, T = input_ids.shape
        self.settle([input_ids, [c.state for c in cache]])
        if self.rank == 0:
            h = self.embed(input_ids, cache[0].offset)  # (B, T, D)
        else:
            h = self.receive(self.rank - 1, (B, T, self._hidden), self.norm.weight.dtype)
        for layer, c in zip(self.layers[: self._n_main], cache):
            h = layer(h, c)
        if self.rank < self.size - 1:
            sent = mx.distributed.send(h, self.rank + 1, group=self.group)
            h = self.share(None, self.size - 1, h.shape, h.dtype, sent)
        else:
            h = self.share(self.norm(h), self.size - 1)
        tie(cache[self._n_main - 1], h)
        return h

    def settle(self, inputs) -> None:
        """Run what the step's inputs still owe (lazy tokens, the caches' last step), on every rank at the same
        point of the program: a receive depends on no array, so left in one graph with them MLX could order it
        before collectives its sender runs first (see the module docstring)."""
        if self.size > 1:
            mx.eval(inputs)

    def receive(self, src: int, shape: tuple, dtype) -> mx.array:
        return mx.distributed.recv_like(mx.zeros(shape, dtype), src, group=self.group)

    def share(self, x, src: int, shape=None, dtype=None, after=()):
        """x as rank `src` computes it, on every rank (the others give None and its shape and dtype). The zeros
        the others add wait on `after` (the step's inputs and what they computed from them), so each rank runs
        the collectives in the one order the data gives."""
        if self.size == 1:
            return x
        if self.rank != src:
            x = mx.depends(mx.zeros(shape, dtype), after)
        return mx.distributed.all_sum(x, group=self.group)


def tie(cache, x) -> None:
    """Make the first array `cache` holds wait on x (see the module docstring); caches keep their arrays as
    attributes (keys/values, rows) or in a list of parts (quantized rows)."""
    for holder in [cache, *vars(cache).values()]:
        for key, value in list(vars(holder).items()) if hasattr(holder, "__dict__") else []:
            if isinstance(value, mx.array):
                setattr(holder, key, mx.depends(value, x))
                return
            if isinstance(value, list) and value and isinstance(value[0], mx.array):
                value[0] = mx.depends(value[0], x)
                return


class PipelineDecoder(Decoder):
    """Decoder's interface over a Stage: hidden states and logits on every rank."""

    def __init__(self, layout: PipelineLayout):
        nn.Module.__init__(self)
        self.spec = layout.local_spec
        self.model = Stage(layout)
        self._head_rank, self._last = layout.head_rank, layout.size - 1
        self._vocab = layout.spec.vocab_size
        if layout.rank == self._head_rank and not layout.spec.tie_embeddings:
            self.lm_head = nn.Linear(layout.spec.hidden_size, self._vocab, bias=False)

    @property
    def mtp_modules(self) -> list:
        """The last rank's MTP blocks; elsewhere one empty stand-in per module (the step runs on the last rank)."""
        if self.model.rank == self._last:
            return self.model.layers[self.model._n_main:]
        return [nn.Module() for _ in self.spec.mtp]

    def head(self, h):
        """h (B, T, D), the same on every rank -> the full logits (B, T, V) on every rank."""
        stage = self.model
        if stage.rank == self._head_rank:
            return stage.share(Decoder.head(self, h).astype(h.dtype), self._head_rank)
        return stage.share(None, self._head_rank, (*h.shape[:-1], self._vocab), h.dtype, h)

    def mtp_step(self, k: int, tokens, h, cache):
        """MTP module k on the last rank, sent the embeddings by rank 0 -> (h', logits) on every rank."""
        stage = self.model
        (B, T), D = tokens.shape, h.shape[-1]
        stage.settle([tokens, h, cache.state])
        sent = None
        if stage.rank == 0:
            e = mx.depends(stage.embed_tokens(tokens).astype(h.dtype), h)  # (B, T, D)
            sent = mx.distributed.send(e, self._last, group=stage.group) if stage.size > 1 else None
        elif stage.rank == self._last:
            e = stage.receive(0, (B, T, D), h.dtype)
        if stage.rank == self._last:
            module = self.mtp_modules[k]
            out = module.predict(e, h, cache)
            both = stage.share(mx.concatenate([out, module.shared_head.norm(out)], axis=-1), self._last)  # (B, T, 2D)
        else:
            after = [tokens, h] + ([sent] if sent is not None else [])
            both = stage.share(None, self._last, (B, T, 2 * D), h.dtype, after)
        return both[..., :D], self.head(both[..., D:])
