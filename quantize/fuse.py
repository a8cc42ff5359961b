"""convert --adapter-path: fold a LoRA/DoRA adapter from mlx_lm.lora into the weights of the modules it adapts, one
group of tensors at a time, as the converter reads them.

A float weight becomes W + scale * (A @ B)^T (DoRA: each row then rescaled to the learned magnitude m), computed in
float32 and stored in the weight's own dtype. A weight the source stores quantized (an MLX folder) is dequantized,
fused and quantized again with its own group size, bits and mode, as mlx_lm.fuse does; every other tensor passes
through untouched.
"""

import mlx.core as mx

from mlxmodels.adapters import Adapter
from mlxmodels.parts.lora import fused_weight


def fuse_group(tensors: dict, adapter: Adapter, modules: dict) -> dict:
    """One group's tensors (our names, after the family's map_weights) -> the same names with the adapter folded in.
    `modules`: the converter's model by path, which says how each weight is stored."""
    out = dict(tensors)
    for path, t in adapter.modules.items():
        if f"{path}.weight" not in out:
            continue  # another group's module
        module = modules[path]
        weight, scales, biases = (out.get(f"{path}.{k}") for k in ("weight", "scales", "biases"))
        params = dict(group_size=module.group_size, bits=module.bits, mode=getattr(module, "mode", "affine")) \
            if scales is not None else {}
        dense = mx.dequantize(weight, scales, biases, **params) if params else weight
        f32 = {k: v.astype(mx.float32) for k, v in t.items()}
        fused = fused_weight(dense.astype(mx.float32), f32["lora_a"], f32["lora_b"], adapter.scale, f32.get("m"))
        if not params:
            out[f"{path}.weight"] = fused.astype(weight.dtype)
            continue
        q, scales, *biases = mx.quantize(fused.astype(scales.dtype), **params)
        out.update({f"{path}.weight": q, f"{path}.scales": scales})
        if biases:
            out[f"{path}.biases"] = biases[0]
    return out
