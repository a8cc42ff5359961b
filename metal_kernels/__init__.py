"""Custom Metal kernels, and the dispatch that picks them.

On a Metal GPU each entry point runs its kernel (the `.metal` bodies beside this file, via
`mx.fast.metal_kernel`); everywhere else, or when switched off, it runs `reference.py`, plain MLX ops with the
same semantics (MLX's own `quantized_matmul` for the matrix-vector products). Shapes a kernel does not take
(head dims that are not multiples of 32, other bit widths) also run the reference. Switch the kernels off on a
Mac to compare with MLX's built-ins: `MLXMODELS_KERNELS=mlx` in the environment, or `use_kernels(False)`.

    paged_attention(q, k_pool, v_pool, block_tables, context_lens, scale, softcap=None, window=None, chunk=None)
    paged_mla(q_latent, q_rope, pool, block_tables, context_lens, scale)
    qmv(x, w, scales, biases, group_size, bits);  qmv_swiglu(x, (wg, sg, bg), (wu, su, bu), group_size, bits)
"""

import os
from typing import Optional

import mlx.core as mx

from . import reference
from .launch import run_metal
from .paged import attention_launch, mla_launch
from . import quantized
from .quantized import qmv_launch, qmv_swiglu_launch

QMV_MAX_ROWS = quantized.MAX_ROWS

_choice: Optional[bool] = None


def use_kernels(enabled: Optional[bool] = True) -> None:
    """Force our kernels on (True: still only on a Metal GPU) or off (False); None restores the default."""
    global _choice
    _choice = enabled


def kernels_enabled() -> bool:
    """True when the entry points run our Metal kernels: a Metal GPU is there and nobody switched them off."""
    if _choice is False or os.environ.get("MLXMODELS_KERNELS", "").lower() in ("0", "off", "mlx", "builtin"):
        return False
    return mx.metal.is_available()


def paged_attention(q, k_pool, v_pool, block_tables, context_lens, scale: float, softcap: Optional[float] = None,
                    window: Optional[int] = None, chunk: Optional[int] = None) -> mx.array:
    """One query token per sequence, q (B, H, D), over its K/V blocks (num_blocks, block_size, Hkv, D) -> (B, H, D)."""
    if kernels_enabled() and q.shape[-1] % 32 == 0 and v_pool.shape == k_pool.shape:
        launch = attention_launch(q, k_pool, v_pool, block_tables, context_lens, scale, softcap, window, chunk)
        return run_metal(launch)[0]
    return reference.paged_attention(q, k_pool, v_pool, block_tables, context_lens, scale, softcap, window, chunk)


def paged_mla(q_latent, q_rope, pool, block_tables, context_lens, scale: float) -> mx.array:
    """Absorbed MLA decode: q_latent (B, H, R), q_rope (B, H, P) over rows [latent | rope key] -> (B, H, R)."""
    if kernels_enabled() and q_latent.shape[-1] % 32 == 0 and q_rope.shape[-1] % 32 == 0:
        return run_metal(mla_launch(q_latent, q_rope, pool, block_tables, context_lens, scale))[0]
    return reference.paged_mla(q_latent, q_rope, pool, block_tables, context_lens, scale)


def _rows(x):
    return x.reshape(-1, x.shape[-1])  # (..., K) -> (M, K)


def qmv(x, w, scales, biases, group_size: int = 64, bits: int = 4) -> mx.array:
    """x (..., K) . dequantize(w)^T -> (..., N), as mx.quantized_matmul(..., transpose=True)."""
    if kernels_enabled() and bits in (4, 8) and group_size in (32, 64, 128) and x.size // x.shape[-1] <= QMV_MAX_ROWS:
        y = run_metal(qmv_launch(_rows(x), w, scales, biases, group_size, bits))[0]
        return y.reshape(*x.shape[:-1], -1)
    return reference.qmv(x, w, scales, biases, group_size, bits)


def qmv_swiglu(x, gate, up, group_size: int = 64, bits: int = 4) -> mx.array:
    """silu(x . Wg^T) * (x . Wu^T) with gate/up as (w, scales, biases) triplets; x (..., K) -> (..., N)."""
    if kernels_enabled() and bits in (4, 8) and group_size in (32, 64, 128) and x.size // x.shape[-1] <= QMV_MAX_ROWS:
        y = run_metal(qmv_swiglu_launch(_rows(x), gate, up, group_size, bits))[0]
        return y.reshape(*x.shape[:-1], -1)
    return reference.qmv_swiglu(x, gate, up, group_size, bits)
