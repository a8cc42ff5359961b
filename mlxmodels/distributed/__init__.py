"""Several Macs: one model split across the ranks of an MLX distributed group (`mlx.launch`).

A Layout (layout.py) is a transformation of the ModelSpec and of the weight names each rank reads; load.py reads
only the rank's share. Modes: pipeline (contiguous layer ranges), tensor (heads, FFN columns and the vocabulary
split, one all_sum per sublayer), experts (routed experts partitioned). Every rank ends a forward pass with the
full logits, so the generation loop is unchanged.

    group = mx.distributed.init()                      # under mlx.launch
    model, tok = mlxmodels.load(path, parallel="tensor")
"""

from importlib import import_module

from .layout import Layout, ParallelError, Slice

# mode -> "module:Layout class" (imported on use, so a mode's module loads only where it runs)
LAYOUTS = {
    "pipeline": "pipeline:PipelineLayout",
    "tensor": "tensor:TensorLayout",
    "experts": "experts:ExpertsLayout",
}


class _Modes(dict):
    def __missing__(self, mode):
        if mode not in LAYOUTS:
            raise ParallelError(f"unknown --parallel mode {mode!r}; use one of {', '.join(LAYOUTS)} or auto")
        module, cls = LAYOUTS[mode].split(":")
        return getattr(import_module(f"{__name__}.{module}"), cls)


MODES = _Modes()

__all__ = ["LAYOUTS", "MODES", "Layout", "ParallelError", "Slice"]
