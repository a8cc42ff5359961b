"""A GGUF file as the loader wants a checkpoint: Hugging Face-named tensors (the quantized ones as mlx-lm's
weight/scales/biases triplets), a config built from the metadata, and the tokenizer.

load.load_model runs `load.build` on `placeholders()` first (names and shapes from the tensor table, nothing read)
and then on `weights()`, exactly as for a safetensors folder, so every family rule and check applies unchanged.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

from mlxmodels.config import HFConfig
from mlxmodels.config_check import check_config

from . import gguf_names, gguf_quant
from .gguf import GGUFError, GGUFFile, TensorInfo
from .gguf_config import architecture, config
from .gguf_tokenizer import read_tokenizer

READABLE = gguf_quant.READABLE


class GGUFCheckpoint:
    def __init__(self, path):
        self.path = Path(path)
        self.file = GGUFFile(path)
        try:
            arch = architecture(self.file)
            self.plan = {}  # GGUF name -> (HF name, what to undo: gguf_names.hf_name)
            for info in self.file.tensors.values():
                mapped = gguf_names.hf_name(arch, info.name, self.file.tensors)
                if mapped == gguf_names.SKIP:
                    continue
                if mapped is None:
                    raise GGUFError(f"{self.path}: tensor {info.name!r} is not one mlxmodels knows for GGUF "
                                    f"architecture {arch!r}; the file is damaged or from a newer llama.cpp")
                if not gguf_quant.readable(info.ggml_type):
                    raise GGUFError(f"{self.path}: tensor {info.name!r} is {info.type_name}, which mlxmodels does "
                                    f"not read from GGUF yet (it reads {READABLE}); use a file of one of those "
                                    "types or the model's Hugging Face folder")
                if mapped[1] == gguf_names.GATE_UP and (len(info.shape) != 3 or info.rows_shape[1] % 2):
                    raise GGUFError(f"{self.path}: tensor {info.name!r} has shape {list(info.rows_shape)}, not "
                                    "(experts, 2 * rows, columns) of fused gate and up experts; the file is damaged")
                self.plan[info.name] = mapped
            quantized = {out.rsplit(".", 1)[0]: self.file.tensors[name].ggml_type
                         for name, (hf, undo) in self.plan.items() for out in gguf_names.outputs(hf, undo)
                         if gguf_quant.bits(self.file.tensors[name].ggml_type)}
            cfg = config(self.file, quantized)
            check_config(cfg, f"{self.path} (the config its metadata gives)")
            self.config = HFConfig(cfg)
        except BaseException:
            self.file.close()
            raise

    def placeholders(self) -> dict:
        """Lazy zeros named and shaped as `weights()` will be: never evaluated, so nothing is read."""
        out = {}
        for name, (gguf_hf, undo) in self.plan.items():
            info = self.file.tensors[name]
            width = gguf_quant.bits(info.ggml_type)
            names = gguf_names.outputs(gguf_hf, undo)
            *lead, k = info.rows_shape
            if len(names) > 1:  # fused gate/up: each half of the rows
                lead[-1] //= len(names)
            for hf in names:
                if width is None:
                    out[hf] = mx.zeros((*lead, k), _float_dtype(info))
                    continue
                stem = hf.rsplit(".", 1)[0]
                out[f"{stem}.weight"] = mx.zeros((*lead, k * width // 32), mx.uint32)
                out[f"{stem}.scales"] = mx.zeros((*lead, k // gguf_quant.GROUP), mx.float16)
                out[f"{stem}.biases"] = mx.zeros((*lead, k // gguf_quant.GROUP), mx.float16)
        return out

    def weights(self) -> dict:
        """Every tensor read, converted to MLX's layout and un-permuted where llama.cpp permuted it."""
        out = {}
        for name in self.plan:
            out.update(self.tensor(name))
        return out

    def tensor(self, name: str) -> dict:
        """One GGUF tensor read as `weights()` reads it: its HF-named array(s) (a quantized one's triplet)."""
        hf, heads_key = self.plan[name]
        info = self.file.tensors[name]
        parts = gguf_quant.to_mlx(self.file.raw(name), info.ggml_type)
        if heads_key == gguf_names.UNIT_OFFSET:
            if len(parts) > 1:
                raise GGUFError(f"{self.path}: norm tensor {name!r} is {info.type_name}; llama.cpp stores norms as "
                                "floats, so the file is damaged: re-download it")
            parts = {"weight": gguf_names.without_unit_offset(parts["weight"], info.ggml_type == gguf_quant.BF16)}
        elif heads_key not in (None, gguf_names.GATE_UP):
            index = self._unpermute(info, heads_key)
            parts = {k: v[index] for k, v in parts.items()}
        names = gguf_names.outputs(hf, heads_key)
        out = {}
        for i, target in enumerate(names):
            stem = target.rsplit(".", 1)[0]
            for part, array in parts.items():
                if len(names) > 1:  # (E, 2 * rows, ...): gate's rows, then up's
                    rows = array.shape[-2] // len(names)
                    array = array[..., i * rows:(i + 1) * rows, :]
                key = target if part == "weight" else f"{stem}.{part}"
                bf16 = info.ggml_type == gguf_quant.BF16 and array.dtype == np.uint16
                out[key] = mx.array(array).view(mx.bfloat16) if bf16 else mx.array(array)
        return out

    def _unpermute(self, info: TensorInfo, heads_key: str) -> np.ndarray:
        rows, heads = info.rows_shape[0], self.config.get(heads_key) or self.config.require("num_attention_heads")
        if len(info.shape) > 2 or rows % (2 * heads):  # a weight (rows, in) or a bias (rows,)
            raise GGUFError(f"{self.path}: tensor {info.name!r} has shape {list(info.rows_shape)}, which is not "
                            f"{heads} heads of an even size ({heads_key}); the metadata and the weights disagree")
        return gguf_names.unpermute_rows(rows, heads)

    def tokenizer(self):
        return read_tokenizer(self.file)

    def close(self):
        self.file.close()


def _float_dtype(info: TensorInfo):
    return {gguf_quant.F32: mx.float32, gguf_quant.F16: mx.float16, gguf_quant.BF16: mx.bfloat16}[info.ggml_type]
