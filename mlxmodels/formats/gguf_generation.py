"""A GGUF file's generation defaults, as the generation_config.json it was converted from said them.

llama.cpp's convert_hf_to_gguf copies a model's generation_config.json sampling settings into `general.sampling.*`
(float32, so 0.6 comes back as 0.6000000238: rounded here to the 7 digits a float32 holds). Files without those
keys have no defaults, and callers stay greedy, as for a folder without generation_config.json.
"""

from __future__ import annotations

import math

from .gguf import GGUFError, GGUFFile

# general.sampling.<key> -> generation_config.json's name
SAMPLING = {"temp": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
            "penalty_repeat": "repetition_penalty"}


def sampling(g: GGUFFile) -> dict:
    """{temperature, top_k, top_p, min_p, repetition_penalty} for the keys the file has."""
    out = {}
    for key, name in SAMPLING.items():
        value = g.get(f"general.sampling.{key}", int if name == "top_k" else float)
        if value is None:
            continue
        if not math.isfinite(value) or value < 0:
            raise GGUFError(f"{g.path}: metadata 'general.sampling.{key}' is {value}, not a finite number >= 0; "
                            "re-download it")
        out[name] = value if name == "top_k" else float(f"{value:.7g}")
    return out


def generation_config(g: GGUFFile, tokenizer) -> dict:
    """generation_config.json for a folder converted from the file: its sampling defaults and, from its tokenizer
    (already checked against the vocabulary), BOS and every token that ends a turn; {} when it knows none."""
    out = sampling(g)
    if out:
        out["do_sample"] = out.get("temperature", 1.0) > 0
    if tokenizer is not None:
        if tokenizer.bos_token_id is not None:
            out["bos_token_id"] = tokenizer.bos_token_id
        if tokenizer.eos_token_ids:
            out["eos_token_id"] = sorted(tokenizer.eos_token_ids)
    return out
