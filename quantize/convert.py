"""SRC (a folder, a Hub id or a GGUF file) -> an MLX folder in mlx-lm's layout, one decoder layer at a time,
atomically. A GGUF file is read through quantize/gguf_source.py (its quantized layers kept as stored unless -q).

The model decides everything: `adapter.spec` builds a `Decoder` (never evaluated: its parameters are lazy, so it
costs nothing) whose parameter names and shapes are the output's, and whose modules say what can be quantized
(`to_quantized`). Each group of source tensors (one decoder layer, or one top-level module such as the embeddings)
goes through the same steps:

    read (mmap, one tensor at a time) -> FP8 dequantize -> adapter.map_weights -> [fuse a LoRA/DoRA adapter]
    -> check names and shapes -> cast -> module.to_quantized -> adapter.export_weights (mlx-lm's names) -> write

An MLX folder that is already quantized is refused, except to fuse an adapter into it (--adapter-path, fuse.py):
then its quantized layers are kept as stored and the adapted ones dequantized, fused and quantized again.

A first pass runs those steps on placeholders (lazy zeros, never evaluated) to plan every output tensor, so the
whole output is known (names, shapes, bytes, shards) before any data is read: errors surface early, the disk
space check is exact, and each shard's header is written up front so tensors stream straight to disk. Peak memory
is about one group (the largest layer or the embedding), never the model.

OUT is claimed before any work and written as a hidden work folder beside it that is renamed at the end (see
claim.py): a second convert to the same OUT stops at once, an error or Ctrl-C leaves no OUT (an existing OUT,
replaced with `force`, survives until the new one is complete), and what a killed run left is removed by the next.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from mlxmodels.config import ModelError, read_config
from mlxmodels.decoder import Decoder
from mlxmodels.families import build_spec
from mlxmodels.formats import folder as files
from mlxmodels.tokenizer import MAX_TOKENIZER_FILE
from mlxmodels.adapters import read_adapter
from mlxmodels.load import quantize_like, resolve
from mlxmodels.parts.quantized import take_dequantized

from . import fp8, recipes
from .fuse import fuse_group
from .legacy_keys import add_legacy_keys
from .claim import TOKENIZER_FILES, Claim, check_out, output_path
from mlxmodels.formats.safetensors import DTYPES, Checkpoint, ShardWriter, dtype_name, nbytes
from app.sizes import human_bytes

SHARD_BYTES = 5 << 30  # mlx-lm's shard size
FLOAT_DTYPES = ("float32", "bfloat16", "float16")


class ConvertError(ModelError):
    """A conversion that cannot be done as asked; nothing was written."""


@dataclass
class Options:
    dtype: Optional[str] = None  # None: config.json's dtype, else each tensor's own (FP8 -> bfloat16)
    quantize: bool = False
    setting: recipes.Setting = field(default_factory=recipes.Setting)
    shard_bytes: int = SHARD_BYTES
    force: bool = False
    adapter_path: Optional[str] = None  # a LoRA/DoRA folder from mlx_lm.lora, fused into the weights (fuse.py)


@dataclass
class Result:
    folder: Path
    source: Path
    tensors: int
    bytes: int
    shards: int
    parameters: int
    seconds: float
    quantization: Optional[dict]

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.bytes / max(self.parameters, 1)


# ------------------------------------------------------------------------------------------ source


def check_download_space(repo: str, patterns: list):
    """Before downloading, the bytes still to fetch must fit in the HF cache's disk (best effort: needs the Hub)."""
    import huggingface_hub
    from huggingface_hub import constants

    try:
        plan = huggingface_hub.snapshot_download(repo, allow_patterns=patterns, dry_run=True)
    except Exception:  # offline, or an old huggingface_hub: the download itself will say what is wrong
        return
    need = sum(f.file_size or 0 for f in plan if f.will_download)
    if need:
        check_space(Path(constants.HF_HUB_CACHE), need, f"downloading {repo}")


def free_bytes(folder: Path) -> int:
    for p in [folder, *folder.parents]:
        if p.exists():
            return shutil.disk_usage(p).free
    return shutil.disk_usage(Path.cwd()).free


def check_space(folder: Path, need: int, what: str):
    free = free_bytes(folder)
    if free < need + (64 << 20):
        raise ConvertError(f"not enough disk space for {what} in {folder}: it needs about {human_bytes(need)} and "
                           f"{human_bytes(free)} are free; free some space or choose another place")


def group_key(name: str) -> tuple:
    """Source tensors are processed in groups: one per decoder layer (`...layers.N.` / GPT-2's `h.N.`, experts and
    all), one per other module (embeddings, final norm, head). Non-layer groups first, then layers in order."""
    parts = name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p.isdigit():
            return (1, int(p), ".".join(parts[: i + 1]))
    return (0, 0, ".".join(parts[:-1]))


# ------------------------------------------------------------------------------------------ the pipeline


class Converter:
    def __init__(self, folder: Path, options: Options):
        self.folder, self.options = Path(folder), options
        self.gguf = None  # a GGUF file's GGUFSource (config, weights and tokenizer in one file)
        self.stored = None  # an MLX folder's quantization entry, when an adapter is fused into its quantized layers
        if self.folder.is_file():
            if options.adapter_path:
                raise ConvertError(f"{self.folder}: fusing an adapter into a GGUF file is not supported; convert it "
                                   "first, then fuse the adapter into the converted folder")
            from .gguf_source import GGUFSource

            self.gguf = GGUFSource(self.folder, dequantize=options.quantize)
            self.cfg, self.raw = self.gguf.config, dict(self.gguf.config)
            self.adapter, self.spec = build_spec(self.cfg, str(self.folder))
            self.block, self.ckpt = None, self.gguf
        else:
            self.cfg = read_config(self.folder)  # raises the clear errors: no config.json, not JSON
            self.raw = files.read_json(self.folder / "config.json")  # as written (multimodal wrapper kept); checked
            self.adapter, self.spec = build_spec(self.cfg, str(self.folder / "config.json"))
            self.block = self._source_quantization()
            self.ckpt = Checkpoint(self.folder)
        if getattr(self.spec, "mtp", None) and not any(n.startswith(f"model.layers.{self.spec.num_layers}.")
                                                       for n in self.ckpt.where):
            self.spec = replace(self.spec, mtp=())  # announced MTP modules that the checkpoint leaves out (as load)
        self.model = Decoder(self.spec)  # lazy: never evaluated, only asked for names, shapes and modules
        if self.stored or (self.gguf is not None and self.gguf.quantization):  # quantized layers written as stored
            stored = self._placeholders(self.ckpt.where)[0]
            if hasattr(self.adapter, "map_weights"):
                stored = self.adapter.map_weights(stored, self.cfg)
            quantize_like(self.model, self.cfg, stored)
        self.modules = dict(self.model.named_modules())
        self.lora = read_adapter(options.adapter_path, self.model) if options.adapter_path else None
        self.expected = {k: tuple(v.shape) for k, v in tree_flatten(self.model.parameters())}
        self.has_fp8 = any(self.ckpt.info(n).dtype == "F8_E4M3" for n in self.ckpt.where)
        self.dtype = self._dtype()
        self.qplan, self.joined, self.unquantized = {}, {}, {}
        if options.quantize:
            joined = getattr(self.adapter, "JOINED_ON_EXPORT", {})
            fused = getattr(self.adapter, "FUSED_ON_EXPORT", ()) + tuple(joined.values())
            self.qplan = recipes.plan(self.model, options.setting, self.spec.num_layers, self.spec.tie_embeddings,
                                      fused)
            # Modules the adapter joins into one on export stay float until then, and the joined one is quantized
            # as a plain Linear, from the float weights, with their (fused, so equal) params.
            for path in list(self.qplan):
                parent, _, leaf = path.rpartition(".")
                for name in (name for name, parts in joined.items() if leaf in parts):
                    self.joined[f"{parent}.{name}"] = self.qplan.pop(path)
            self.unquantized = recipes.indivisible(self.model, options.setting, self.spec.tie_embeddings)
            if self.unquantized and not self.qplan and not self.joined:
                raise ConvertError(self._nothing_to_quantize())
        groups = {}
        for name in self.ckpt.where:
            groups.setdefault(group_key(name), []).append(name)
        self.groups = [sorted(groups[k]) for k in sorted(groups)]

    def _nothing_to_quantize(self) -> str:
        setting, sizes = self.options.setting, self.unquantized
        fits = [g for g in recipes.GROUP_SIZES if all(n % g == 0 for n in sizes.values())]
        what = (f"choose --group-size {max(fits)}, which divides them" if fits and setting.mode == "affine"
                else "convert without -q")
        return (f"nothing to quantize: no weight's input size is a multiple of the group size {setting.group_size} "
                f"({recipes.describe_paths(sizes)}); {what}")

    def _source_quantization(self):
        q = self.cfg.get("quantization") or self.cfg.get("quantization_config")
        if not q:
            return None
        block = fp8.block_size({"quantization_config": q})
        if block is None:
            method = f"MLX {q.get('mode', 'affine')} {q['bits']}-bit" if "bits" in q else q.get("quant_method", "?")
            if "bits" in q and self.options.adapter_path and not self.options.quantize:
                self.stored = q  # fusing an adapter: its layers are fused and quantized again, the rest kept
                return None
            if "bits" in q and self.options.adapter_path:
                raise ConvertError(f"{self.folder} is already quantized ({method}); fusing an adapter keeps that "
                                   "quantization, so leave out -q and the quantization options")
            raise ConvertError(f"{self.folder} is already quantized ({method}); convert from the float (or FP8) "
                               "checkpoint instead")
        return block

    def _dtype(self):
        name = self.options.dtype
        if name is None:
            name = self.cfg.get("torch_dtype") or self.cfg.get("dtype")
            name = name if name in FLOAT_DTYPES else ("bfloat16" if self.has_fp8 else None)
        if name is not None and name not in FLOAT_DTYPES:
            raise ConvertError(f"unknown dtype {name!r}; use one of {', '.join(FLOAT_DTYPES)}")
        return getattr(mx, name) if name else None

    # ---------------------------------------------------------------------------------- one group

    def transform(self, tensors: dict, dtypes: dict) -> dict:
        """Source tensors of one group -> output tensors (name -> lazy array), sorted by name."""
        tensors = fp8.dequantize_group(tensors, dtypes, self.block)
        # Cast before mapping (stacking experts, splitting, transposing commute with a cast): intermediates are
        # then in the output dtype, not float32. Cast again after, in case a map computes in another dtype.
        tensors = {k: self._cast(k, v) for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
        if hasattr(self.adapter, "map_weights"):
            tensors = self.adapter.map_weights(tensors, self.cfg)
        if self.spec.tie_embeddings:
            tensors.pop("lm_head.weight", None)
        if self.stored:  # modules mlx-lm quantizes and we keep float (MoE routers) are written float, as loaded
            for path in [n[: -len(".scales")] for n in tensors if n.endswith(".scales")]:
                module = self.modules.get(path)
                if module is not None and "scales" not in module:
                    tensors[f"{path}.weight"] = take_dequantized(tensors, path, self.cfg)
        if self.lora is not None:
            tensors = fuse_group(tensors, self.lora, self.modules)
        self._check(tensors)
        self.mapped = set(tensors)
        out, by_module = {}, {}
        for name, t in tensors.items():
            t = self._cast(name, t)
            path, leaf = name.rsplit(".", 1)
            if path in self.qplan:
                by_module.setdefault(path, {})[leaf] = t
            else:
                out[name] = t
        for path, local in by_module.items():
            out.update(self._quantize(path, local))
        if hasattr(self.adapter, "export_weights"):
            out = self.adapter.export_weights(out, self.cfg)
        for path in [p for p in self.joined if f"{p}.weight" in out]:
            out.update(self._quantize_linear(path, out.pop(f"{path}.weight")))
        return dict(sorted(out.items()))

    def _check(self, tensors: dict):
        for name, t in tensors.items():
            want = self.expected.get(name)
            if want is None:
                raise ConvertError(f"{self.folder}: unexpected tensor {name}; the checkpoint does not match "
                                   "config.json's model_type/layer count")
            if tuple(t.shape) != want:
                raise ConvertError(f"{self.folder}: tensor {name} has shape {tuple(t.shape)} but config.json implies "
                                   f"{want}; the config and the weights disagree")

    def _cast(self, name: str, t: mx.array) -> mx.array:
        if not mx.issubdtype(t.dtype, mx.floating) or recipes.FLOAT32_TENSORS.search(name):
            return t
        return t.astype(self.dtype) if self.dtype is not None else t

    def _quantize(self, path: str, local: dict) -> dict:
        """The module's own `to_quantized` on its real tensors (Linear, Embedding, stacked experts alike)."""
        module = self.modules[path]
        saved = module.parameters()
        own = {k for k, _ in tree_flatten(saved)}
        if set(local) != own:
            raise ConvertError(f"{path}: the checkpoint gives {sorted(local)} but the module has {sorted(own)}")
        module.update(tree_unflatten(list(local.items())))
        try:
            q = module.to_quantized(**self.qplan[path])
        finally:
            module.update(saved)
        return {f"{path}.{k}": v for k, v in tree_flatten(q.parameters())}

    def _quantize_linear(self, path: str, weight: mx.array) -> dict:
        """A joined weight, quantized as nn.QuantizedLinear quantizes its Linear (the module mlx-lm builds)."""
        q, scales, *biases = mx.quantize(weight, **self.joined[path])
        return {f"{path}.weight": q, f"{path}.scales": scales, **({f"{path}.biases": biases[0]} if biases else {})}

    def _placeholders(self, names):
        out, dtypes = {}, {}
        for n in names:
            info = self.ckpt.info(n)
            out[n] = mx.zeros(info.shape, dtype=DTYPES[info.dtype][2])
            dtypes[n] = info.dtype
        return out, dtypes

    # ---------------------------------------------------------------------------------- whole model

    def plan(self) -> list:
        """Every output tensor (name, safetensors dtype, shape) in write order, from placeholders: no data read.
        Also checks that the checkpoint covers every parameter of the model."""
        entries, seen = [], set()
        for names in self.groups:
            out = self.transform(*self._placeholders(names))
            seen |= self.mapped
            entries += [(name, dtype_name(t.dtype), tuple(t.shape)) for name, t in out.items()]
        missing = sorted(self.expected.keys() - seen)
        if missing:
            raise ConvertError(f"{self.folder}: missing {len(missing)} tensor(s), e.g. {', '.join(missing[:3])}; "
                               "the checkpoint is incomplete or does not match config.json")
        names = [e[0] for e in entries]
        if len(set(names)) != len(names):
            raise ConvertError(f"{self.folder}: two groups produce the same output tensor; the checkpoint repeats one")
        self.entries = entries
        return entries

    def write(self, folder: Path, progress: Optional[Callable[[int], None]] = None) -> ShardWriter:
        """Read, transform and write every group; `progress(n)` after each with the source bytes it read."""
        writer = ShardWriter(folder, self.entries, self.options.shard_bytes, metadata={"format": "mlx"})
        try:
            for names in self.groups:
                tensors = {n: self.ckpt.array(n) for n in names}
                dtypes = {n: self.ckpt.info(n).dtype for n in names}
                out = self.transform(tensors, dtypes)
                del tensors
                for name in list(out):  # one output at a time: its intermediates are freed before the next
                    t = out.pop(name)
                    mx.eval(t)
                    writer.write(name, t)
                    del t
                mx.clear_cache()  # hand freed buffers back: resident memory stays about one group
                if progress:
                    progress(sum(self.ckpt.info(n).nbytes for n in names))
            writer.finish(total_parameters=self.parameters)
        finally:
            writer.abort()
        return writer

    @property
    def parameters(self) -> int:
        """Parameters of the float model (quantized weights count unpacked, as mlx-lm counts them: a GGUF source's
        model is built quantized, and its packed words and scales are not parameters)."""
        total = sum(math.prod(shape) for shape in self.expected.values())
        for path, module in self.model.named_modules():
            if hasattr(module, "bits") and "scales" in module:
                prefix = f"{path}." if path else ""
                packed = self.expected[prefix + "weight"]
                total += math.prod(packed) * 32 // module.bits - math.prod(packed)
                total -= sum(math.prod(self.expected[prefix + k]) for k in ("scales", "biases")
                             if prefix + k in self.expected)
        return total

    @property
    def source_bytes(self) -> int:
        return sum(self.ckpt.info(n).nbytes for n in self.ckpt.where)

    def quantization_entry(self) -> Optional[dict]:
        if not self.options.quantize:
            return self.gguf.quantization if self.gguf else self.stored
        setting = self.options.setting
        entry = recipes.config_entry(setting, self.qplan)
        if hasattr(self.adapter, "export_weights"):
            # mlx-lm reads per-layer params under its own module names: infer them from the exported shapes.
            shapes = {n: s for n, _, s in self.entries}
            for name, shape in shapes.items():
                if name.endswith(".scales"):
                    path = name[: -len(".scales")]
                    bits = shapes[f"{path}.weight"][-1] * 32 // (shape[-1] * setting.group_size)
                    if bits != setting.bits:
                        entry[path] = setting.params(bits)
        return entry

    def config(self) -> dict:
        """The output config.json: the source's, with mlx-lm's quantization entry, the dtype written, and the
        older key spellings mlx-lm reads added next to transformers 5's (legacy_keys)."""
        cfg = add_legacy_keys(self.raw)
        cfg.pop("quantization", None)
        cfg.pop("quantization_config", None)
        entry = self.quantization_entry()
        if entry is not None:
            cfg["quantization"] = entry
            cfg["quantization_config"] = dict(entry)
        if self.dtype is not None:
            name = str(self.dtype).split(".")[-1]
            keys = [k for k in ("torch_dtype", "dtype") if k in cfg] or ["torch_dtype"]
            for k in keys:
                cfg[k] = name
        return cfg

    @cached_property
    def side_files(self) -> dict:
        """name -> bytes written beside the weights: the source folder's tokenizer files (each checked as the loader
        checks it), or those a GGUF's metadata makes (tokenizer, its config with the chat template, generation)."""
        if self.gguf is not None:
            return self.gguf.side_files()
        return {f.name: files.read_bytes(f, MAX_TOKENIZER_FILE) for f in tokenizer_files(self.folder)}

    def close(self):
        self.ckpt.close()


# ------------------------------------------------------------------------------------------ atomic output


def tokenizer_files(folder: Path) -> list:
    """The tokenizer files to copy, each checked as the loader checks it (inside the folder, a regular file)."""
    names = {p.name for pattern in TOKENIZER_FILES for p in folder.glob(pattern) if not p.is_dir()}
    return [files.member(folder, name) for name in sorted(names)]


def check_apart(out: Path, source: Path):
    """OUT is not the source, does not hold it and is not inside it (symlinks resolved): --force would replace
    the source, and a model written inside it would become part of it."""
    o, s = out.resolve(), source.resolve()
    if s.is_relative_to(o):
        raise ConvertError(f"{out} is (or holds) the source folder; choose another OUT")
    if o.is_relative_to(s):
        raise ConvertError(f"{out} is inside the source folder {source}; choose an OUT outside it")


def convert(src, out, options: Optional[Options] = None, progress=None, log: Callable[[str], None] = lambda s: None,
            check_source: Optional[Callable[[Path], None]] = None) -> Result:
    """Convert SRC into OUT; returns what was written. Raises ModelError subclasses for user mistakes.

    `progress(total_bytes)`, if given, makes a progress bar (`update(n)`, `close()`) over the source bytes.
    `check_source(folder)`, if given, runs on the source folder (downloaded, if a Hub id) before anything is read
    from it or written: convert --report checks its text there."""
    options = options or Options()
    start = time.perf_counter()
    out = output_path(out)
    if os.path.isdir(os.path.expanduser(src)):  # before the claim is made beside OUT (which may be inside SRC)
        check_apart(out, Path(os.path.expanduser(src)))
    check_out(out, options.force)  # before any work, and again once the claim is held
    claim = Claim.take(out)
    try:
        claim.sweep()
        check_out(out, options.force)  # the sweep may have put back an OUT that a killed --force run set aside
        folder = resolve(src, before_weights=check_download_space).absolute()
        check_apart(out, folder)  # again for a Hub id's folder, and for a folder that was replaced meanwhile
        if check_source is not None:
            check_source(folder)
        conv = Converter(folder, options)
        try:
            entries = conv.plan()
            total = sum(nbytes(d, s) for _, d, s in entries)
            extra = sum(len(data) for data in conv.side_files.values())
            check_space(out.parent, total + extra, f"the converted model ({out.name})")
            writer = write_folder(conv, claim.work_folder(), out, total, progress, log)
            claim.install(options.force)
        finally:
            conv.close()
    finally:
        claim.release()
    return Result(out, folder, len(entries), total, len(writer.names), conv.parameters,
                  time.perf_counter() - start, conv.quantization_entry())


def write_folder(conv: Converter, work: Path, out: Path, total: int, progress, log) -> ShardWriter:
    """Weights, then tokenizer files, then config.json last: a folder killed before its end is never a model."""
    if conv.unquantized:
        log(f"left float: {len(conv.unquantized)} weight(s) whose input size is not a multiple of the group size "
            f"{conv.options.setting.group_size}: {recipes.describe_paths(conv.unquantized)}")
    log(f"converting {conv.folder}: {len(conv.groups)} groups, {human_bytes(conv.source_bytes)} -> "
        f"{human_bytes(total)}")
    bar = progress(conv.source_bytes) if progress else None
    try:
        writer = conv.write(work, bar.update if bar else None)
        for name, data in conv.side_files.items():
            (work / name).write_bytes(data)
        (work / "config.json").write_text(json.dumps(conv.config(), indent=4))
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):  # a full disk, a quota, a file size limit
            raise ConvertError(f"could not write {out.name} in {out.parent}: {e.strerror}; nothing was kept: free "
                               "some space or choose another place") from None
        raise
    finally:
        if bar is not None:
            bar.close()
    if not (work / "tokenizer.json").is_file() and not list(work.glob("*.tiktoken")) \
            and not (work / "tokenizer.model").is_file():
        log(f"note: {conv.folder} has no tokenizer files, so {out.name} has none; add them to chat with it")
    return writer
