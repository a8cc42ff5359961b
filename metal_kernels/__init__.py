"""Custom Metal kernels, and the entry points that pick between them and MLX's built-in ops.

Each entry point hands its arguments to the process's dispatch (dispatch.py), which runs our kernel (the `.metal`
bodies beside this file, launched through `mx.fast.metal_kernel`) only on a Metal GPU that is the default device,
for inputs the kernel takes, after the kernel variant passed a self-test against MLX's built-in op and, in mode
auto, beat it on the call's shape class. Everywhere else the entry point runs `reference.py`: MLX's own ops with
the same semantics (`quantized_matmul` for the matrix-vector products). `MLXMODELS_KERNELS=on|off|auto` (auto the
default) or `use_kernels(True|False|None)` overrides; `mlxm doctor` shows the verdicts.

    paged_attention(q, k_pool, v_pool, block_tables, context_lens, scale, softcap=None, window=None, chunk=None)
    paged_mla(q_latent, q_rope, pool, block_tables, context_lens, scale)
    qmv(x, w, scales, biases, group_size, bits);  qmv_swiglu(x, (wg, sg, bg), (wu, su, bu), group_size, bits)
"""

from typing import Optional

import mlx.core as mx

from . import reference
from .dispatch import current

__all__ = ["kernels_enabled", "paged_attention", "paged_mla", "qmv", "qmv_swiglu", "reference", "use_kernels"]


def use_kernels(enabled: Optional[bool] = True) -> None:
    """Force our kernels on (True: self-tested, not timed; still only on a Metal GPU) or off (False); None goes
    back to MLXMODELS_KERNELS (auto when unset)."""
    current().set_mode(None if enabled is None else "on" if enabled else "off")


def kernels_enabled() -> bool:
    """Could the entry points run our kernels here: a Metal GPU as the default device, and not switched off."""
    return current().enabled()


def paged_attention(q, k_pool, v_pool, block_tables, context_lens, scale: float, softcap: Optional[float] = None,
                    window: Optional[int] = None, chunk: Optional[int] = None) -> mx.array:
    """One query token per sequence, q (B, H, D), over its K/V blocks (num_blocks, block_size, Hkv, D) -> (B, H, D)."""
    return current().call("paged_attention", (q, k_pool, v_pool, block_tables, context_lens, scale, softcap, window,
                                              chunk))


def paged_mla(q_latent, q_rope, pool, block_tables, context_lens, scale: float) -> mx.array:
    """Absorbed MLA decode: q_latent (B, H, R), q_rope (B, H, P) over rows [latent | rope key] -> (B, H, R)."""
    return current().call("paged_mla", (q_latent, q_rope, pool, block_tables, context_lens, scale))


def qmv(x, w, scales, biases, group_size: int = 64, bits: int = 4) -> mx.array:
    """x (..., K) . dequantize(w)^T -> (..., N), as mx.quantized_matmul(..., transpose=True)."""
    return current().call("qmv", (x, w, scales, biases, group_size, bits))


def qmv_swiglu(x, gate, up, group_size: int = 64, bits: int = 4) -> mx.array:
    """silu(x . Wg^T) * (x . Wu^T) with gate/up as (w, scales, biases) triplets; x (..., K) -> (..., N)."""
    return current().call("qmv_swiglu", (x, gate, up, group_size, bits))
