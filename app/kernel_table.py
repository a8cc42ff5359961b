"""Representative shapes for each kernel entry point, the dispatch's check of each, and the table of results:
what `mlxm doctor` and `scripts/bench_paged.py` both report.

The dispatch does the measuring (`Dispatch.check`): the variant's self-test against the reference, then the
kernel and the built-in timed in this process on random inputs of the shape class (the entry's `E_timing`), which
is exactly what `MLXMODELS_KERNELS=auto` decides by. The arguments given here are unevaluated zeros: the checks read
only their shapes and dtypes and make their own random inputs, so a 32k-token pool costs nothing until timed.
GB/s is the bytes a call must read at least (the weights, or the visible K/V or latent rows) over its time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional

import mlx.core as mx

from app.sizes import human_bytes

ROWS = (1, 2, 4, 8, 16)  # qmv rows (decode batch), capped at the kernel's row limit
CONTEXTS = (2048, 8192, 32768)
BATCHES = (1, 8)
MLA_HEADS = (16, 128)  # DeepSeek-V2-Lite's and DeepSeek-V3's


@dataclass(frozen=True)
class Shape:
    entry: str  # qmv, qmv_swiglu, paged_attention, paged_mla
    label: str
    args: Callable[[], tuple]  # the entry point's arguments
    bytes_read: int


def qmv(M: int, N: int, K: int, bits: int = 4, group: int = 64, dtype=mx.float16) -> Shape:
    def args():
        x = mx.zeros((M, K), dtype)  # (M, K)
        w = mx.zeros((N, K * bits // 32), mx.uint32)  # (N, K * bits / 32)
        s = mx.zeros((N, K // group), dtype)  # (N, K / group)
        return x, w, s, s, group, bits

    return Shape("qmv", f"M={M} {N}x{K} {bits}-bit g{group}", args, N * K * bits // 8 + 2 * N * K // group * dtype.size)


def qmv_swiglu(M: int, N: int, K: int, bits: int = 4, group: int = 64, dtype=mx.float16) -> Shape:
    one = qmv(M, N, K, bits, group, dtype)

    def args():
        x, w, s, b, _, _ = one.args()
        return x, (w, s, b), (w, s, b), group, bits

    return Shape("qmv_swiglu", f"M={M} 2x {N}x{K} {bits}-bit g{group}", args, 2 * one.bytes_read)


def attention(B: int, ctx: int, Hkv: int = 8, G: int = 4, D: int = 128, BS: int = 16, dtype=mx.float16) -> Shape:
    blocks = -(-ctx // BS)

    def args():
        pool = mx.zeros((B * blocks, BS, Hkv, D), dtype)  # (num_blocks, BS, Hkv, D)
        return (mx.zeros((B, Hkv * G, D), dtype), pool, pool, mx.zeros((B, blocks), mx.int32),
                mx.full((B,), ctx, mx.int32), D**-0.5)

    return Shape("paged_attention", f"B={B} ctx={ctx} {Hkv}x{G} heads d{D}", args, 2 * B * ctx * Hkv * D * dtype.size)


def mla(B: int, ctx: int, H: int, R: int = 512, P: int = 64, BS: int = 16, dtype=mx.float16) -> Shape:
    blocks = -(-ctx // BS)

    def args():
        return (mx.zeros((B, H, R), dtype), mx.zeros((B, H, P), dtype), mx.zeros((B * blocks, BS, R + P), dtype),
                mx.zeros((B, blocks), mx.int32), mx.full((B,), ctx, mx.int32), (R + P) ** -0.5)

    return Shape("paged_mla", f"B={B} ctx={ctx} {H} heads R{R}+{P}", args, B * ctx * (R + P) * dtype.size)


def _rows(N: int, K: int) -> List[int]:
    """ROWS up to the kernels' row limit for an (N, K) weight on this GPU (MLX's own qmv batch limit; the smallest
    of any Mac where there is none)."""
    from metal_kernels.quantized import max_rows

    return [m for m in ROWS if m <= max_rows(K, N)]


def mac_shapes(quick: bool = False) -> List[Shape]:
    """A Llama-8B-like FFN (4096 x 14336, 4-bit, groups of 64) at 1-16 rows (up to the row limit), Llama-style
    paged attention (8 KV heads, GQA 4, head dim 128, float16) at 2k/8k/32k tokens, batch 1 and 8, and MLA with
    16 and 128 heads."""
    if quick:
        return [qmv(1, 4096, 14336), qmv_swiglu(1, 14336, 4096), attention(1, 8192), mla(1, 8192, 128)]
    return ([qmv(m, 4096, 14336) for m in _rows(4096, 14336)] + [qmv_swiglu(m, 14336, 4096) for m in _rows(14336, 4096)]
            + [attention(b, c) for c in CONTEXTS for b in BATCHES]
            + [mla(b, 8192, h) for h in MLA_HEADS for b in BATCHES])


def emulator_shapes(quick: bool = False) -> List[Shape]:
    """The same axes, small enough for the emulator (one fiber per GPU thread): 64x512 weights, 64 and 256 tokens
    over 2 KV heads, 32 latent rows; the template values (head dim 128, R 512, P 64, 4-bit g64) stay the Mac's."""
    if quick:
        return [qmv(1, 64, 512), qmv_swiglu(1, 64, 512), attention(1, 64, Hkv=2), mla(1, 32, 16)]
    rows = _rows(64, 512)
    return ([qmv(m, 64, 512) for m in rows] + [qmv_swiglu(m, 64, 512) for m in rows]
            + [attention(b, c, Hkv=2) for c in (64, 256) for b in BATCHES]
            + [mla(b, 32, h) for h in MLA_HEADS for b in BATCHES])


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or e.__class__.__name__
    return f"{e.__class__.__name__}: {text}"[:300]


FOOTPRINT = 4  # peak memory of a check over the bytes a call reads: the built-in's float32 copy of the gathered K/V


def memory_budget() -> Optional[int]:
    """Half of MLX's recommended working set on this GPU: a larger check could push a small Mac into swap or past
    what Metal allows; None where MLX does not say."""
    try:
        size = mx.device_info(mx.gpu).get("max_recommended_working_set_size")
    except Exception:  # noqa: BLE001
        return None
    return int(size) // 2 if isinstance(size, (int, float)) and size > 0 else None


def check_all(d, shapes: Iterable[Shape], progress: Callable[[str], None] = lambda line: None,
              budget: Optional[int] = None) -> dict:
    """-> {"rows": [...]}: the dispatch `d`'s check per shape, or one line saying why that shape was not checked
    (it raised, the kernel does not take it, or it needs more than `budget` bytes)."""
    rows = []
    for shape in shapes:
        progress(f"checking {shape.entry} {shape.label} ...")
        row = {"entry": shape.entry, "shape": shape.label}
        if budget is not None and FOOTPRINT * shape.bytes_read > budget:
            row["error"] = (f"skipped: it needs about {human_bytes(FOOTPRINT * shape.bytes_read)}, more than half of "
                            f"MLX's recommended working set on this GPU")
            rows.append(row)
            continue
        try:
            row.update(d.check(shape.entry, shape.args()))
            for who in ("kernel", "builtin"):
                us = row.get(f"{who}_us")
                row[f"{who}_GBps"] = shape.bytes_read / us / 1e3 if us else None
        except Exception as e:  # noqa: BLE001  (one line in the report, never a traceback)
            row["error"] = one_line(e)
        rows.append(row)
    return {"rows": rows}


def emulate_all(shapes: Iterable[Shape], progress: Callable[[str], None] = lambda line: None) -> dict:
    """The same checks with the emulator standing in for Metal, its verdicts kept in a temporary folder (never the
    user's cache: an emulator's timing says nothing about a GPU)."""
    try:
        from metal_kernels.testing import emulator_runner, simulate_metal

        with simulate_metal(emulator_runner) as d:  # verdicts in a fresh temporary folder
            return check_all(d, shapes, progress)
    except Exception as e:  # noqa: BLE001
        return {"rows": [], "error": f"the emulator could not run the checks: {one_line(e)}"}


EMULATED = "emulator results on reduced shapes: correctness only, times meaningless"
NO_EMULATOR = "the emulator is not available (it needs Linux and a C++ compiler, g++)"


def emulator_available() -> bool:
    try:
        from metal_kernels.emulator import available

        return available()
    except Exception:  # noqa: BLE001  (an emulator that cannot load is one that is not available)
        return False


def measure(d, quick: bool, emulate: bool, progress: Callable[[str], None] = lambda line: None) -> dict:
    """-> {"backend": "metal" | "simulated" | "emulator" | None, "rows": [...], maybe "emulator" (what its rows mean)
    and "error"}: on a Metal GPU (or one simulated: `metal_kernels.testing`) the dispatch `d` checks the full shapes,
    on the GPU even where MLX's default device is the CPU; elsewhere, when `emulate`, the emulator reduced ones."""
    if mx.metal.is_available():
        with mx.stream(mx.gpu):
            return {"backend": "metal", **check_all(d, mac_shapes(quick), progress, memory_budget())}
    if d.on_gpu():
        return {"backend": "simulated", **check_all(d, mac_shapes(quick), progress)}
    if not emulate:
        return {"backend": None}
    if not emulator_available():
        return {"backend": None, "emulator": NO_EMULATOR}
    return {"backend": "emulator", "emulator": EMULATED, **emulate_all(emulator_shapes(quick), progress)}


def _num(v, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def format_rows(rows: List[dict]) -> str:
    """One line per shape: self-test, us per call and GB/s for kernel and built-in, and auto's pick; a failed check
    or self-test adds its reason on the next line."""
    head = ("kernel", "shape", "self-test", "kernel us", "built-in us", "kernel GB/s", "built-in GB/s", "auto picks")
    table = [head]
    notes = {}
    for r in rows:
        if "error" in r:
            table.append((r["entry"], r["shape"], "error", "-", "-", "-", "-", "built-in"))
            notes[len(table) - 1] = r["error"]
            continue
        table.append((r["entry"], r["shape"], r.get("selftest", "-"), _num(r.get("kernel_us"), ".1f"),
                      _num(r.get("builtin_us"), ".1f"), _num(r.get("kernel_GBps"), ".1f"),
                      _num(r.get("builtin_GBps"), ".1f"), str(r.get("pick", "-"))))
        if r.get("reason"):
            notes[len(table) - 1] = r["reason"]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    lines = []
    for i, row in enumerate(table):
        cells = [str(c).ljust(w) if j < 3 else str(c).rjust(w) for j, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if i in notes:
            lines.append("    " + notes[i])
    return "\n".join(lines)
