"""A GGUF file as `mlxm convert` reads a source: the loader's tensors (Hugging Face names, quantized layers as
mlx-lm's weight/scales/biases triplets), one GGUF tensor at a time, and the files a folder would carry beside them.

Without -q the triplets go to the output as they are (no requantization: Q4_0/Q4_1/Q8_0 are already MLX's affine
layout) with the `quantization` entry the GGUF's config has. With -q they are dequantized here, in float32, and the
converter quantizes the float model as it quantizes any checkpoint. The tokenizer the loader rebuilds from the
metadata is saved as tokenizer.json (its BOS/EOS post-processor included) with a tokenizer_config.json naming the
special tokens and the chat template, so mlx-lm (through transformers) and our loader read the same tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from mlxmodels.formats.gguf_generation import generation_config
from mlxmodels.formats.gguf_model import GGUFCheckpoint
from mlxmodels.formats.gguf_names import outputs
from mlxmodels.formats.safetensors import dtype_name


@dataclass(frozen=True)
class Info:
    shape: tuple
    dtype: str  # safetensors dtype name
    nbytes: int  # bytes read from the file for it


class GGUFSource:
    """`where` (output-side tensor name -> GGUF tensor name), `info(name)`, `array(name)`, `close()`: what the
    converter asks of a Checkpoint."""

    def __init__(self, path: Path, dequantize: bool):
        self.ckpt = GGUFCheckpoint(path)
        try:
            self.config = self.ckpt.config
            self.dequantize = dequantize
            self.where, self.infos = {}, {}
            every = self.ckpt.placeholders()
            for name, (fused, undo) in self.ckpt.plan.items():
                for hf in outputs(fused, undo):  # a fused gate_up tensor gives two outputs
                    stem = hf.rsplit(".", 1)[0]
                    parts = {k: every[k] for k in (hf, f"{stem}.scales", f"{stem}.biases") if k in every}
                    stored = {k: p.nbytes for k, p in parts.items()}  # what is read: the progress counts these
                    if dequantize and len(parts) == 3:  # a triplet becomes one float32 weight of the unpacked shape
                        packed = parts[hf].shape
                        unpacked = packed[-1] * 32 // self._params(stem)["bits"]
                        parts = {hf: mx.zeros((*packed[:-1], unpacked), mx.float32)}
                        stored = {hf: sum(stored.values())}
                    for key, p in parts.items():
                        self.where[key] = name
                        self.infos[key] = Info(tuple(p.shape), dtype_name(p.dtype), stored[key])
        except BaseException:
            self.ckpt.close()
            raise
        self._last = (None, {})  # the GGUF tensor read last, as output tensors: a triplet is asked for part by part

    def _params(self, stem: str) -> dict:
        """group_size and bits of a quantized module, from the config's quantization entry (its override, if any)."""
        q = self.config["quantization"]
        return q[stem] if isinstance(q.get(stem), dict) else q

    def info(self, name: str) -> Info:
        return self.infos[name]

    def array(self, name: str) -> mx.array:
        gguf_name = self.where[name]
        if self._last[0] != gguf_name:
            self._last = (gguf_name, self._read(gguf_name))
        return self._last[1][name]

    def _read(self, gguf_name: str) -> dict:
        parts = self.ckpt.tensor(gguf_name)
        if not self.dequantize:
            return parts
        out = {}
        for hf in outputs(*self.ckpt.plan[gguf_name]):
            stem = hf.rsplit(".", 1)[0]
            if f"{stem}.scales" not in parts:
                out[hf] = parts[hf]
                continue
            scales, biases = (parts[f"{stem}.{k}"].astype(mx.float32) for k in ("scales", "biases"))
            params = self._params(stem)
            out[hf] = mx.dequantize(parts[hf], scales, biases, group_size=params["group_size"], bits=params["bits"])
        return out

    def side_files(self) -> dict:
        """name -> bytes: tokenizer.json and tokenizer_config.json (when the file has a tokenizer) and
        generation_config.json (when it knows BOS/EOS or sampling defaults)."""
        tokenizer = self.ckpt.tokenizer()
        out = {}
        if tokenizer is not None and tokenizer.to_json() is not None:
            out["tokenizer.json"] = tokenizer.to_json().encode()
            tc = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                  **tokenizer.special_tokens_map}
            if self.config.get("max_position_embeddings"):
                tc["model_max_length"] = self.config["max_position_embeddings"]
            if tokenizer.chat_template is not None:
                tc["chat_template"] = tokenizer.chat_template
            out["tokenizer_config.json"] = json.dumps(tc, indent=2, ensure_ascii=False).encode()
        generation = generation_config(self.ckpt.file, tokenizer)
        if generation:
            out["generation_config.json"] = json.dumps(generation, indent=2).encode()
        return out

    @property
    def quantization(self):
        """The entry for the output's config.json when the triplets are kept; None when dequantized."""
        return None if self.dequantize else self.config.get("quantization")

    def close(self):
        self.ckpt.close()
