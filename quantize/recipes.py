"""What gets quantized, and with how many bits: a `Setting` (mode, bits, group size, recipe, embeddings/head on or
off) turned into a per-module plan over a model (`plan(model, setting)` -> {module path: params}).

Rules: only modules that can quantize themselves (`to_quantized`: Linear, Embedding, stacked experts) whose input
dimension divides by the group size; MoE routers stay float (`FLOAT_MODULES`); norms and biases are never
modules with `to_quantized`, so they stay float too. A recipe gives per-layer bits: mixed precision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from mlxmodels.config import ModelError

MODES = {"affine": None, "mxfp4": (4, 32), "mxfp8": (8, 32)}  # mx modes allow exactly one (bits, group size)
BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
# Routers pick experts: a few bits of error flip the choice, and they are tiny. Kept float.
FLOAT_MODULES = re.compile(r"(^|\.)(mlp\.gate|shared_expert_gate|router|feed_forward\.router)$")
# Router state that must not even be cast to 16 bits (DeepSeek-V3's expert-selection bias).
FLOAT32_TENSORS = re.compile(r"e_score_correction_bias$")
LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
EMBEDDINGS = ("model.embed_tokens", "model.embed_positions")
HEAD = "lm_head"


class RecipeError(ModelError):
    """A quantization setting that cannot be applied."""


@dataclass(frozen=True)
class Setting:
    bits: int = 4
    group_size: int = 64
    mode: str = "affine"
    recipe: Optional[str] = None
    embeddings: bool = True  # quantize the embeddings
    head: bool = True  # quantize the output head

    def __post_init__(self):
        if self.mode not in MODES:
            raise RecipeError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        fixed = MODES[self.mode]
        if fixed and (self.bits, self.group_size) != fixed:
            raise RecipeError(f"{self.mode} means {fixed[0]} bits with group size {fixed[1]}, not {self.bits} bits "
                              f"with group size {self.group_size}; drop --bits/--group-size")
        if self.bits not in BITS:
            raise RecipeError(f"cannot quantize to {self.bits} bits; use one of {', '.join(map(str, BITS))}")
        if self.group_size not in GROUP_SIZES:
            raise RecipeError(f"group size {self.group_size} is not one of {', '.join(map(str, GROUP_SIZES))}")
        if self.recipe is not None:
            if self.recipe not in RECIPES:
                raise RecipeError(f"unknown recipe {self.recipe!r}; recipes: {', '.join(sorted(RECIPES))}")
            if self.mode != "affine":
                raise RecipeError(f"recipes mix affine bit widths; they cannot be used with --mode {self.mode}")

    @classmethod
    def for_mode(cls, mode="affine", bits=None, group_size=None, **kw) -> "Setting":
        """Fill bits and group size from the mode when not given (mxfp4: 4/32, mxfp8: 8/32, affine: 4/64)."""
        fixed = MODES.get(mode) or (4, 64)
        return cls(bits=bits or fixed[0], group_size=group_size or fixed[1], mode=mode, **kw)

    def params(self, bits: Optional[int] = None) -> dict:
        return {"group_size": self.group_size, "bits": bits or self.bits, "mode": self.mode}

    @property
    def label(self) -> str:
        if self.mode != "affine":
            return self.mode
        name = self.recipe or f"{self.bits}-bit"
        return f"{name}, group {self.group_size}"


# --------------------------------------------------------------------------------------------- recipes
# A recipe maps (module path, layer index or None, number of layers, is_head) -> bits.

Recipe = Callable[[str, Optional[int], int, bool], int]


def edges(low: int, high: int) -> Recipe:
    """`low` bits, except `high` for the head and, in the first and last layers, the attention value/output and
    the MLP down projections (MLA's value up-projection is `unembed_out`)."""

    def bits(path, layer, n, head):
        leaf = path.rsplit(".", 1)[-1]
        if head or (layer in (0, n - 1) and leaf in ("v_proj", "o_proj", "down_proj", "unembed_out")):
            return high
        return low

    return bits


def k_quant_like(low: int, high: int) -> Recipe:
    """llama.cpp's Q*_K_M choice (as mlx-lm's mixed_* recipes): `high` bits for the head and for the value and
    down projections of the first and last eighth of the layers and of every third layer between them."""

    def bits(path, layer, n, head):
        i = layer or 0
        more = i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2
        leaf = path.rsplit(".", 1)[-1]
        if head or (more and leaf in ("v_proj", "down_proj", "unembed_out")):
            return high
        return low

    return bits


RECIPES: dict[str, Recipe] = {
    "edges_4_6": edges(4, 6),
    "edges_3_6": edges(3, 6),
    "mixed_2_6": k_quant_like(2, 6),
    "mixed_3_4": k_quant_like(3, 4),
    "mixed_3_6": k_quant_like(3, 6),
    "mixed_4_6": k_quant_like(4, 6),
}


# --------------------------------------------------------------------------------------------- the plan


def layer_of(path: str) -> Optional[int]:
    m = LAYER.search(path + ".")
    return int(m.group(1)) if m else None


def plan(model, setting: Setting, num_layers: int, tied: bool, fused=()) -> dict:
    """{module path: to_quantized params} for every module to quantize. Works on an unevaluated model (shapes only).

    `fused`: tuples of sibling names an adapter exports as one tensor (GPT-2's q/k/v -> c_attn); siblings get the
    same params (the most bits any of them asks for)."""
    recipe = RECIPES[setting.recipe] if setting.recipe else None
    out = {}
    for path, module, is_head in _wanted(model, setting, tied):
        if module.weight.shape[-1] % setting.group_size:
            continue
        bits = recipe(path, layer_of(path), num_layers, is_head) if recipe else setting.bits
        out[path] = setting.params(bits)
    for names in fused:
        for path in list(out):
            parent, leaf = path.rsplit(".", 1) if "." in path else ("", path)
            if leaf not in names:
                continue
            siblings = [f"{parent}.{s}" for s in names]
            if all(s in out for s in siblings):
                best = max((out[s] for s in siblings), key=lambda p: p["bits"])
                for s in siblings:
                    out[s] = best
            else:  # a sibling cannot be quantized (shape): keep them all float
                for s in siblings:
                    out.pop(s, None)
    return out


def _wanted(model, setting: Setting, tied: bool):
    """(path, module, is head) of every module the setting asks to quantize, whatever its shape."""
    for path, module in model.named_modules():
        if not path or not hasattr(module, "to_quantized") or "weight" not in module or FLOAT_MODULES.search(path):
            continue
        is_embedding = path in EMBEDDINGS
        is_head = path == HEAD or (tied and path == "model.embed_tokens")
        if (is_embedding and not setting.embeddings) or (is_head and not setting.head):
            continue
        yield path, module, is_head


def indivisible(model, setting: Setting, tied: bool) -> dict:
    """{module path: input size} of the modules `plan` leaves float only because their input size (the weight's
    last dimension) is not a multiple of the group size: quantization groups run along it."""
    return {path: module.weight.shape[-1] for path, module, _ in _wanted(model, setting, tied)
            if module.weight.shape[-1] % setting.group_size}


def describe_paths(sizes: dict) -> str:
    """{path: input size} -> 'model.layers.*.mlp.down_proj (x28, input 4001), lm_head (input 100)': layer numbers
    folded, so one line holds a whole model."""
    groups: dict = {}
    for path, size in sizes.items():
        key = (re.sub(r"\.\d+\.", ".*.", path), size)
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{name} ({f'x{n}, ' if n > 1 else ''}input {size})"
                     for (name, size), n in sorted(groups.items()))


def config_entry(setting: Setting, params: dict) -> dict:
    """mlx-lm's `quantization` entry: the defaults plus a dict per module whose params differ from them."""
    default = setting.params()
    entry = dict(default)
    for path, p in sorted(params.items()):
        if p != default:
            entry[path] = dict(p)
    return entry
