"""Compiled steps for few-token calls (decode, speculative verification).

There a step's time goes to dispatching hundreds of tiny ops, not to arithmetic; `mx.compile` fuses the
elementwise ones (norms, routers, activations, RoPE) and replays the trace without Python, which makes a decode
step of the default model 1.4-1.6x faster on the CPU (docs/BENCHMARKS.md). Only cache-free parts are compiled, so a trace depends
on the step's shape alone; long steps (prefill chunks) run eagerly, where the overhead is amortised and a trace
per chunk length would pile up.
"""

import os

import mlx.core as mx
import mlx.nn as nn

MAX_TOKENS = 16  # steps of up to this many tokens per sequence run compiled
ENABLED = os.environ.get("MLXMODELS_COMPILE", "1") != "0"  # MLXMODELS_COMPILE=0: eager everywhere (debugging)


def use_compiled(tokens: int) -> bool:
    return ENABLED and tokens <= MAX_TOKENS


def compiled(module: nn.Module, method: str):
    """module.<method>, compiled once per module. The module's parameters are implicit inputs read at every call,
    so weights loaded or quantized after the first call are used (captured arrays would be frozen in the trace)."""
    key = "_compiled_" + method
    fn = module.__dict__.get(key)
    if fn is None:
        fn = module.__dict__[key] = mx.compile(getattr(module, method), inputs=module)
    return fn
