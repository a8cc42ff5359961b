"""OLMo 2 = Llama, except norms after each sublayer (no input norm) and RMS QK-norm over the whole projection."""

from dataclasses import replace

from ..config import HFConfig
from . import llama


def spec(cfg: HFConfig):
    base = llama.spec(cfg)
    base = llama.map_attn(base, lambda i, a: replace(a, qk_norm="proj"))
    return base.with_layers(replace(l, placement="post") for l in base.layers)
