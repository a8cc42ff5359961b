"""Token ids agree with the embedding before anything runs.

MLX does not bounds-check a gather: an id past the embedding's rows reads whatever memory follows it (garbage
output) or faults (SIGSEGV). So every id that can reach a model is checked once, where it enters: the tokenizer's
largest id and its BOS/EOS ids when a model and its tokenizer are loaded together, a prompt's ids when they are
fed, and a draft model's ids against the target's (speculative decoding feeds each model the other's tokens).
"""

from __future__ import annotations

from typing import Any, Optional

import mlx.core as mx

from .errors import ModelError


class VocabError(ModelError):
    """Token ids outside a model's vocabulary."""


def vocab_size(model: Any) -> Optional[int]:
    """Rows of the model's embedding (our Decoder's spec; mlx-lm models carry their args); None when unknown."""
    spec = getattr(model, "spec", None) or getattr(model, "args", None)
    return getattr(spec, "vocab_size", None)


def check_tokenizer(tokenizer: Any, model: Any, where: str) -> None:
    """The tokenizer can only produce ids the model embeds; its BOS/EOS ids too."""
    v = vocab_size(model)
    largest = tokenizer.max_token_id
    if largest >= v:
        raise VocabError(f"{where}: the tokenizer has ids up to {largest} but config.json's vocab_size is {v}; "
                         "the tokenizer does not belong to this model (use the model's own tokenizer files)")
    named = {"bos_token_id": [tokenizer.bos_token_id], "eos_token_id": sorted(tokenizer.eos_token_ids)}
    for key, ids in named.items():
        bad = [i for i in ids if i is not None and not 0 <= i < v]
        if bad:
            raise VocabError(f"{where}: {key} {bad[0]} is outside the model's vocabulary (0..{v - 1}); fix {key} in "
                             "generation_config.json/config.json or use the model's own tokenizer files")


def check_ids(tokens, model: Any) -> None:
    """A prompt's ids (a list, or a 1-D array) all lie in [0, vocab_size). A list is checked in Python: no wait on
    the device (the draft model's prefill runs every speculative round)."""
    v = vocab_size(model)
    if v is None or len(tokens) == 0:
        return
    if isinstance(tokens, mx.array):
        lo, hi = mx.stack([mx.min(tokens), mx.max(tokens)]).tolist()
    else:
        lo, hi = min(tokens), max(tokens)
    if lo < 0 or hi >= v:
        bad = lo if lo < 0 else hi
        raise VocabError(f"token id {bad} is outside the model's vocabulary (0..{v - 1}); "
                         "the prompt was encoded with another model's tokenizer")
