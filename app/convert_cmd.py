"""`mlxm convert SRC OUT`: import Hugging Face safetensors (folder or Hub id), optionally quantize, write an MLX
folder that mlx-lm loads too. Self-contained: `add_parser(subparsers)` registers it."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from app import progress, signals

DESCRIPTION = """Convert a Hugging Face checkpoint (a local folder or a Hub id such as Qwen/Qwen3-0.6B) or a GGUF
file (x.gguf, ollama:NAME[:TAG]) into an MLX folder in mlx-lm's layout, one layer at a time. FP8 block-scaled
checkpoints are dequantized; a GGUF's quantized layers are kept as stored, and its tokenizer and chat template are
written as tokenizer.json and tokenizer_config.json. With -q (or any quantization option) Linear and Embedding
weights are quantized (a GGUF's from its dequantized values); norms, biases and MoE routers stay float.
The output appears only when complete; an existing OUT is replaced only with --force."""
MAX_REPORT_TOKENS = 1 << 20  # --report-tokens and --report-context: a million tokens already takes hours to score


def add_parser(subparsers):
    from app.flags import number
    from quantize import recipes

    def gib(text):  # finite and at least one byte: inf, nan, 0 and negatives are refused before any work
        return number(float, text, lambda v: math.isfinite(v) and v * (1 << 30) >= 1, "a number of GiB > 0")

    def tokens(low):  # --report's token counts, bounded (the text is read up to 64 bytes a token)
        return lambda text: number(int, text, lambda v: low <= v <= MAX_REPORT_TOKENS,
                                   f"a whole number from {low} to {MAX_REPORT_TOKENS}")

    p = subparsers.add_parser("convert", help="import (and quantize) a Hugging Face checkpoint",
                              description=DESCRIPTION)
    p.error = _one_line_error  # user mistakes: one line, no usage dump
    p.add_argument("src", metavar="SRC", help="local model folder, Hugging Face Hub id, GGUF file or ollama:NAME")
    p.add_argument("out", metavar="OUT", help="output folder (must not exist, unless --force)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                   help="dtype of float tensors (default: config.json's; FP8 checkpoints -> bfloat16)")
    q = p.add_argument_group("quantization (any of these implies -q)")
    q.add_argument("-q", "--quantize", action="store_true", help="quantize (default: affine 4-bit, group 64)")
    q.add_argument("--bits", type=int, choices=recipes.BITS, default=None)
    q.add_argument("--group-size", type=int, choices=recipes.GROUP_SIZES, default=None)
    q.add_argument("--mode", choices=list(recipes.MODES), default=None,
                   help="affine (2-8 bits), mxfp4 (4 bits, group 32), mxfp8 (8 bits, group 32)")
    q.add_argument("--recipe", choices=sorted(recipes.RECIPES), default=None,
                   help="per-layer bits: edges_4_6 = 4-bit, 6-bit head and first/last layers' v/o/down "
                        "projections; mixed_L_H = llama.cpp Q*_K_M-like")
    q.add_argument("--no-quantize-embeddings", dest="embeddings", action="store_false",
                   help="keep the embeddings float")
    q.add_argument("--no-quantize-head", dest="head", action="store_false", help="keep the output head float")
    p.add_argument("--adapter-path", default=None, metavar="DIR",
                   help="fuse the LoRA/DoRA adapters mlx_lm.lora wrote in DIR into the weights (also into an MLX "
                        "folder that is already quantized, whose quantization is kept)")
    p.add_argument("--shard-size", type=gib, default=5.0, metavar="GIB",
                   help="largest output shard, in GiB (default 5, as mlx-lm)")
    p.add_argument("--force", action="store_true",
                   help="replace OUT if it exists (once the new one is complete) and holds only what convert writes")
    r = p.add_argument_group("report")
    r.add_argument("--report", metavar="TEXTFILE", default=None,
                   help="after converting, print perplexity on TEXTFILE and mean KL from the float model")
    r.add_argument("--report-settings", default="", metavar="LIST",
                   help="more settings to compare in memory, e.g. 8,4,3g32,mxfp4,edges_4_6")
    r.add_argument("--report-tokens", type=tokens(1), default=2048, metavar="N",
                   help="most tokens of TEXTFILE to score (default 2048)")
    r.add_argument("--report-context", type=tokens(2), default=512, metavar="N",
                   help="tokens per scored window (default 512)")
    p.set_defaults(func=run)
    return p


def _one_line_error(message):
    print(f"mlxm: error: {message}", file=sys.stderr)
    sys.exit(2)


def setting_from(args):
    from quantize import recipes

    quantize = args.quantize or any(v is not None for v in (args.bits, args.group_size, args.mode, args.recipe))
    return quantize, recipes.Setting.for_mode(args.mode or "affine", bits=args.bits, group_size=args.group_size,
                                              recipe=args.recipe, embeddings=args.embeddings, head=args.head)


def run(args):
    from app.sizes import human_bytes
    from quantize import report
    from quantize.convert import Options, convert

    quantize, setting = setting_from(args)
    text, extra, ids = None, [], []
    if args.report:  # every mistake in the report's text or settings stops the run before anything is written
        text = report.read_text(Path(args.report), args.report_tokens)
        extra = report.parse_settings(args.report_settings, setting)

    def check_source(folder):  # the report's reference (the source) and its tokens, once the source is there
        if text is not None:
            ids.extend(report.token_ids(folder, text, args.report, args.report_tokens))

    options = Options(dtype=args.dtype, quantize=quantize, setting=setting, force=args.force,
                      shard_bytes=int(args.shard_size * (1 << 30)), adapter_path=args.adapter_path)
    previous = signals.catch()  # a kill or a closed terminal cleans up as Ctrl-C
    try:
        with progress.hub_downloads():
            result = convert(args.src, args.out, options, progress=lambda total: progress.byte_bar(total, "convert"),
                             log=print, check_source=check_source)
    except KeyboardInterrupt as e:
        # convert's cleanup has run by now: the work folder and the claim are gone, an existing OUT is as it was
        # (or, if the signal came in the last instant, the new OUT is complete)
        print(f"mlxm: interrupted by {signals.name(e)}: the conversion to {args.out} stopped and its "
              "partial output was removed", file=sys.stderr)
        sys.exit(signals.exit_status(e))
    finally:
        signals.restore(previous)
    what = f"{setting.label}, {result.bits_per_weight:.2f} bits/weight" if quantize else "float"
    if not quantize and result.quantization:  # a GGUF's (or, fusing an adapter, an MLX folder's) quantized layers
        what = f"quantized layers kept as stored, {result.bits_per_weight:.2f} bits/weight"
    print(f"wrote {result.folder} ({what}): {result.tensors} tensors, {human_bytes(result.bytes)} in "
          f"{result.shards} shard(s), {result.seconds:.1f} s")
    if text is not None:
        label = f"{setting.label} (OUT)" if quantize else "float (OUT)"
        rows, tokens = report.report(ids, result.source, result.folder, extra, _dtype(result.folder),
                                     args.report_context, label, args.adapter_path)
        print(report.table(rows, tokens))


def _dtype(folder):
    import mlx.core as mx

    from mlxmodels.config import read_side_config

    cfg = read_side_config(Path(folder), "config.json")
    name = cfg.get("torch_dtype") or cfg.get("dtype")
    return getattr(mx, name) if name in ("float32", "bfloat16", "float16") else None
