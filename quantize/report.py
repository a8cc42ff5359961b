"""How much a quantization setting costs: perplexity on a text and the mean KL divergence of the quantized model's
next-token distribution from the float model's, KL(p_float || p_quant), one table row per setting.

The float model is the source folder computed in float32. Settings come from folders on disk (the converted OUT)
or are built in memory from the float model exactly as the converter would write them (cast to the output dtype,
then quantized per `recipes.plan`), so a user can compare settings before converting again. All models are held
in memory at once (the text is evaluated window by window through each), so this needs the float model's
float32 size plus each setting's.
"""

from __future__ import annotations

import codecs
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

import mlxmodels
from mlxmodels.adapters import fuse_adapter
from mlxmodels.config import read_config
from mlxmodels.families import get_adapter
from mlxmodels.tokenizer import load_tokenizer

from . import fp8, recipes
from .convert import ConvertError
from mlxmodels.formats.folder import FolderError, open_regular
from mlxmodels.formats.safetensors import Checkpoint


@dataclass
class Row:
    label: str
    bits_per_weight: float
    perplexity: float
    kl: float


def parse_settings(text: str, base: recipes.Setting) -> list:
    """'4,8,3g32,mxfp4,edges_4_6' -> Settings (embeddings/head flags and group size from `base`)."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if item in ("mxfp4", "mxfp8"):
            out.append(recipes.Setting.for_mode(item, embeddings=base.embeddings, head=base.head))
        elif item in recipes.RECIPES:
            out.append(recipes.Setting(recipe=item, group_size=base.group_size, embeddings=base.embeddings,
                                       head=base.head))
        elif m := re.fullmatch(r"(\d)(?:g(\d+))?", item):
            out.append(recipes.Setting(bits=int(m.group(1)), group_size=int(m.group(2) or base.group_size),
                                       embeddings=base.embeddings, head=base.head))
        else:
            raise recipes.RecipeError(f"cannot read report setting {item!r}; use e.g. 4, 8, 3g32, mxfp4, "
                                      f"or a recipe ({', '.join(sorted(recipes.RECIPES))})")
    return out


def folder_bits(folder: Path, model: nn.Module) -> float:
    ckpt = Checkpoint(folder)
    stored = sum(ckpt.info(n).nbytes for n in ckpt.where)
    ckpt.close()
    return 8 * stored / parameter_count(model)


def parameter_count(model: nn.Module) -> int:
    """Weights counted unpacked (a 4-bit weight is one parameter), as mlx-lm counts them."""
    total = 0
    for _, m in tree_flatten(model.leaf_modules(), is_leaf=lambda m: isinstance(m, nn.Module)):
        if hasattr(m, "bits"):
            total += m.weight.size * 32 // m.bits + (m["bias"].size if "bias" in m else 0)
        else:
            total += sum(v.size for _, v in tree_flatten(m.parameters()))
    return total


def in_memory(source: Path, setting: recipes.Setting, dtype, adapter_path=None) -> tuple:
    """The float model (with the adapter fused, as convert --adapter-path fuses it) quantized as the converter would:
    cast to `dtype`, quantize, compute in float32."""
    model, _ = mlxmodels.load(source, dtype="float32", adapter_path=adapter_path)
    fuse_adapter(model)
    fused = getattr(get_adapter(model.spec.model_type), "FUSED_ON_EXPORT", ())
    plan = recipes.plan(model, setting, model.spec.num_layers, model.spec.tie_embeddings, fused)
    if dtype is not None:
        model.update(tree_map(lambda x: x.astype(dtype) if mx.issubdtype(x.dtype, mx.floating) else x,
                              model.parameters()))
    nn.quantize(model, setting.group_size, setting.bits, mode=setting.mode,
                class_predicate=lambda p, m: plan.get(p, False))
    # bytes as the converter would store them (scales and norms in `dtype`), counted before the float32 compute cast
    stored = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    model.update(tree_map(lambda x: x.astype(mx.float32) if mx.issubdtype(x.dtype, mx.floating) else x,
                          model.parameters()))
    mx.eval(model.parameters())
    return model, stored


def check_source(source: Path):
    """The float reference is the source folder as mlxmodels loads it: FP8 checkpoints and GGUF files (quantized
    already) cannot be that reference."""
    if source.is_file():
        raise ConvertError(f"--report needs a float source folder, and {source} is a GGUF file (quantized already); "
                           "compare with `mlxm convert` of the model's Hugging Face folder instead")
    cfg = read_config(source)
    if fp8.block_size(cfg):
        raise ConvertError(f"--report needs a float source, and {source} is FP8; convert it to float first "
                           "(mlxm convert SRC FLOAT --dtype bfloat16) and convert/report from FLOAT")
    if "bits" in (cfg.get("quantization") or {}):  # fusing an adapter into an MLX folder: quantized already
        raise ConvertError(f"--report needs a float source, and {source} is quantized already; fuse the adapter "
                           "without --report, or into the float model")


def read_text(path: Path, max_tokens: int) -> str:
    """--report's text, read before converting: only a regular file, opened without blocking (a FIFO or a device
    would block or never end), only as much as `max_tokens` can use (64 bytes a token is far more than any
    tokenizer needs), and only UTF-8 (a character cut at that limit is dropped)."""
    try:
        f = open_regular(path)
    except FolderError as e:
        raise ConvertError(f"--report: {e}") from None
    limit = 64 * (max_tokens + 1)
    with f:
        data = f.read(limit + 1)
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(data[:limit], final=len(data) <= limit)
    except UnicodeDecodeError as e:
        raise ConvertError(f"--report: {path} is not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} "
                           f"({e.reason}); convert it first, e.g. iconv -f latin1 -t utf-8") from None


def token_ids(source: Path, text: str, path, max_tokens: int) -> list:
    """The ids the report scores, checked before converting: the source must be a float model with a tokenizer,
    and the text (from `path`) must give at least two tokens (a window scores each token after its first)."""
    check_source(source)
    tokenizer = load_tokenizer(source)
    if tokenizer is None:
        raise ConvertError(f"--report needs tokenizer files in {source}")
    ids = tokenizer.encode(text)[: max_tokens + 1]
    if len(ids) < 2:
        raise ConvertError(f"--report: {path} is too short: it gives {len(ids)} token(s) and the report needs at "
                           "least two; give a longer text")
    return ids


def windows(ids: list, context: int) -> list:
    return [ids[i:i + context] for i in range(0, len(ids) - 1, context) if len(ids[i:i + context]) >= 2]


def evaluate(reference: nn.Module, models: list, ids: list, context: int) -> tuple:
    """-> (reference NLL per token, [(NLL, KL) per token for each model])."""
    ref_nll, sums, count = 0.0, [[0.0, 0.0] for _ in models], 0
    for w in windows(ids, context):
        x, y = mx.array([w[:-1]]), mx.array(w[1:])
        lp_ref = nn.log_softmax(reference(x)[0].astype(mx.float32), axis=-1)  # (T, vocab)
        ref_nll += float(-mx.take_along_axis(lp_ref, y[:, None], axis=-1).sum())
        p_ref = mx.exp(lp_ref)
        for s, model in zip(sums, models):
            lp = nn.log_softmax(model(x)[0].astype(mx.float32), axis=-1)
            s[0] += float(-mx.take_along_axis(lp, y[:, None], axis=-1).sum())
            s[1] += float((p_ref * (lp_ref - lp)).sum())
        count += len(w) - 1
    if count == 0:
        raise ConvertError("the report text is too short: it needs at least two tokens")
    return ref_nll / count, [(n / count, k / count) for n, k in sums], count


def report(ids: list, source: Path, out: Optional[Path], settings: list = (), dtype=None, context: int = 512,
           out_label: str = "converted", adapter_path=None) -> tuple:
    """-> (rows, tokens evaluated). `ids`: from token_ids; `out`: a converted folder to evaluate (None to skip).
    `adapter_path`: the reference is the source with that adapter (on the fly), which is what a fused OUT holds."""
    reference = fuse_adapter(mlxmodels.load(source, dtype="float32", adapter_path=adapter_path)[0])
    labels, models, bits = [], [], []
    if out is not None:
        model, _ = mlxmodels.load(out, dtype="float32")
        labels.append(out_label)
        models.append(model)
        bits.append(folder_bits(out, model))
    for setting in settings:
        model, stored = in_memory(source, setting, dtype, adapter_path)
        labels.append(f"{setting.label} (in memory)")
        models.append(model)
        bits.append(8 * stored / parameter_count(model))
    ref_nll, results, count = evaluate(reference, models, ids, context)
    what = "source + adapter" if adapter_path else "source"
    rows = [Row(f"float ({what}, float32 compute)", folder_bits(source, reference), math.exp(ref_nll), 0.0)]
    rows += [Row(l, b, math.exp(n), k) for l, b, (n, k) in zip(labels, bits, results)]
    return rows, count


def table(rows: list, tokens: int) -> str:
    lines = [f"{tokens} tokens scored", "", "| setting | bits/weight | perplexity | mean KL(float ‖ setting) |",
             "|---|---:|---:|---:|"]
    lines += [f"| {r.label} | {r.bits_per_weight:.2f} | {r.perplexity:.4f} | {r.kl:.5f} |" for r in rows]
    return "\n".join(lines)
