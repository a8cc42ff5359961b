"""DecoderBlock: attention and FFN with residuals; the norm placement decides which of four norm slots exist.

The slot names are the Hugging Face names, which mean different things under different placements
(Llama's `post_attention_layernorm` normalises the FFN input; Gemma's normalises the attention output).
The FFN half reads no cache, so few-token steps run it compiled (see `compiled.py`).
"""

import mlx.nn as nn

from ..spec import LayerSpec
from .compiled import compiled, use_compiled
from .norms import make_norm

# placement -> names of the norms at (attention input, attention output, FFN input, FFN output)
NORM_SLOTS = {
    "pre": ("input_layernorm", None, "post_attention_layernorm", None),
    "post": (None, "post_attention_layernorm", None, "post_feedforward_layernorm"),
    "sandwich": ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"),
}


class DecoderBlock(nn.Module):
    def __init__(self, hidden: int, spec: LayerSpec, self_attn: nn.Module, ffn: nn.Module):
        super().__init__()
        self.self_attn = self_attn
        setattr(self, spec.ffn_name, ffn)
        self._ffn = spec.ffn_name
        self._slots = NORM_SLOTS[spec.placement]
        for name in self._slots:
            if name is not None:
                setattr(self, name, make_norm(spec.norm, hidden))

    def _norm(self, slot: int, x):
        name = self._slots[slot]
        return x if name is None else self[name](x)

    def __call__(self, x, cache):
        h = x + self._norm(1, self.self_attn(self._norm(0, x), cache))
        return (compiled(self, "_ffn_half") if use_compiled(h.shape[1]) else self._ffn_half)(h)

    def _ffn_half(self, h):
        return h + self._norm(3, self[self._ffn](self._norm(2, h)))
