"""Kernel or built-in: one object decides, per call, whether an entry point runs our Metal kernel or MLX's own op,
so that a Mac never pays for a kernel with a crash or a slowdown.

A call takes the built-in op when the mode is off, when the default device is not a Metal GPU, or when the kernel
does not take its inputs (the plan raises `plan.Unsupported`). Otherwise the first time a kernel variant (what Metal
compiles: `Plan.variant`) is met, a self-test runs it on small random inputs (`E_sample`), evaluated inside
try/except, and compares it with the built-in (run in float32); an exception or a mismatch turns that variant off
for the process with one notice on stderr. In mode auto the first time a (variant, shape class) is met, kernel and
built-in are timed on random inputs of that class (`E_timing`) and the faster one is used from then on. Verdicts go
to the user cache (verdicts.py), so a later process on the same MLX and device skips both. Self-tests and timings
use fresh arrays only, so they also run while `mx.compile` traces a caller: the trace then records the path decided.

    MLXMODELS_KERNELS=auto (default) | on (self-test, no timing) | off    (also 1 = on; 0, mlx, builtin = off)
"""

import os
import sys
import threading
import time
import warnings
from statistics import median
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import mlx.core as mx
import numpy as np

from . import paged, quantized, reference
from .launch import run_metal
from .plan import Plan, Runner, Unsupported
from .verdicts import Verdicts, default_folder


class Entry(NamedTuple):
    plan: Callable[..., Plan]
    sample: Callable[..., tuple]  # the self-test's inputs
    timing: Callable[..., tuple]  # the speed check's inputs
    builtin: Callable[..., mx.array]  # MLX's own ops, same semantics


ENTRIES: Dict[str, Entry] = {
    "qmv": Entry(quantized.qmv_plan, quantized.qmv_sample, quantized.qmv_timing, reference.qmv),
    "qmv_swiglu": Entry(quantized.qmv_swiglu_plan, quantized.qmv_swiglu_sample, quantized.qmv_swiglu_timing,
                        reference.qmv_swiglu),
    "paged_attention": Entry(paged.paged_attention_plan, paged.paged_attention_sample, paged.paged_attention_timing,
                             reference.paged_attention),
    "paged_mla": Entry(paged.paged_mla_plan, paged.paged_mla_sample, paged.paged_mla_timing, reference.paged_mla),
}

ON, OFF, AUTO = "on", "off", "auto"
SPELLINGS = {"": AUTO, "auto": AUTO, "on": ON, "1": ON, "off": OFF, "0": OFF, "mlx": OFF, "builtin": OFF}
TOLERANCE = {mx.float32: 1e-4, mx.float16: 5e-3, mx.bfloat16: 3e-2}  # of max |built-in|: each dtype's rounding
WARMUP, RUNS = 2, 5  # per path; timed runs alternate kernel and built-in so drift hits both alike


def metal_gpu() -> bool:
    """Our kernels can run: a Metal GPU, and it is the default device (a Mac set to the CPU gets MLX's ops)."""
    return mx.metal.is_available() and mx.default_device().type == mx.DeviceType.gpu


def stderr_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def probe_device() -> str:
    """The GPU's name where there is one ("Apple M2 Max"), else the CPU's; "unknown" when MLX does not say."""
    try:
        gpu = mx.metal.is_available()
        if hasattr(mx, "device_info"):  # MLX >= 0.30
            info = mx.device_info(mx.gpu if gpu else mx.cpu)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                info = mx.metal.device_info() if gpu else {}
        name = info.get("device_name") or info.get("architecture")
    except Exception:  # a probe must not stop the model: the name only keys the verdict cache
        name = None
    return str(name or "unknown")[:100]


def first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


def in_float32(args):
    """The arguments with every floating array in float32: the built-in then gives the answer a half-precision
    kernel is held to (MLX's own float16 quantized_matmul on the CPU is ~5e-3 off it, more than the kernels)."""
    if isinstance(args, (tuple, list)):
        return type(args)(in_float32(a) for a in args)
    if isinstance(args, mx.array) and mx.issubdtype(args.dtype, mx.floating):
        return args.astype(mx.float32)
    return args


def mismatch(got: mx.array, want: mx.array, dtype: mx.Dtype) -> Optional[str]:
    """Why `got` is not `want` (computed in float32) within `dtype`'s rounding, or None when it is."""
    if got.shape != want.shape or got.dtype != dtype:
        return f"got {got.dtype} {got.shape}, expected {dtype} {want.shape}"
    g, w = np.array(got.astype(mx.float32)), np.array(want.astype(mx.float32))
    if not np.isfinite(g).all():
        return "NaN or infinity in the output"
    top = float(np.abs(w).max(initial=0.0))
    err = float(np.abs(g - w).max(initial=0.0))
    tol = TOLERANCE.get(dtype, 1e-4) * max(top, 1e-6)
    return None if err <= tol else f"max |kernel - built-in| = {err:.3g} > {tol:.3g} (max |built-in| = {top:.3g})"


class Failed(Exception):
    """The kernel raised or gave wrong numbers; the message says how."""


class Dispatch:
    """Runs entry points (`call`) and keeps their decisions. Collaborators: `runner` launches a kernel
    (`launch.run_metal` on a Mac), `on_gpu` says whether kernels may run, `verdicts` keeps results across
    processes (made on first need from the user cache), `clock` times, `notify` tells the user."""

    def __init__(self, runner: Runner = run_metal, on_gpu: Callable[[], bool] = metal_gpu,
                 verdicts: Optional[Verdicts] = None, clock: Callable[[], float] = time.perf_counter,
                 notify: Callable[[str], None] = stderr_line, entries: Dict[str, Entry] = ENTRIES,
                 mode: Optional[str] = None, device: Optional[str] = None):
        self.runner, self.on_gpu, self.clock, self.notify, self.entries = runner, on_gpu, clock, notify, entries
        self._verdicts, self._device = verdicts, device
        self._picks: Dict[Tuple[str, str], bool] = {}  # (variant, shape class) -> run the kernel
        self._lock = threading.RLock()  # first decisions only; the decode path reads _picks without it
        self.set_mode(mode)

    # -- mode

    def set_mode(self, mode: Optional[str]) -> None:
        """"on", "off", "auto", or None: MLXMODELS_KERNELS, read now (not at every call: this is the decode path)."""
        if mode is None:
            raw = os.environ.get("MLXMODELS_KERNELS", "").strip().lower()
            mode = SPELLINGS.get(raw)
            if mode is None:
                self.notify(f"mlxmodels: MLXMODELS_KERNELS={raw!r} is not one of on, off, auto; using auto.")
                mode = AUTO
        if mode not in (ON, OFF, AUTO):
            raise ValueError(f"kernel mode must be 'on', 'off' or 'auto', got {mode!r}")
        self.mode = mode
        self._picks.clear()  # a pick made in mode on skipped the timing auto needs

    def enabled(self) -> bool:
        """Could a kernel run here at all (mode not off, a Metal GPU as the default device)? Cheap."""
        return self.mode != OFF and self.on_gpu()

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = probe_device()
        return self._device

    @property
    def store(self) -> Verdicts:
        if self._verdicts is None:
            self._verdicts = Verdicts(default_folder(), mx.__version__, self.device)
        return self._verdicts

    # -- the decode path

    def call(self, entry: str, args: tuple) -> mx.array:
        e = self.entries[entry]
        if self.mode == OFF or not self.on_gpu():
            return e.builtin(*args)
        try:
            plan = e.plan(*args)
        except Unsupported:
            return e.builtin(*args)
        use = self._picks.get((plan.variant, plan.shape_class))
        if use is None:
            use = self._decide(entry, plan, args)
        if use:
            try:
                return plan.run(self.runner)
            except Exception as err:  # a launch the self-test's shapes did not meet
                self._fail(entry, plan.variant, "while running: " + first_line(err))
        return e.builtin(*args)

    def _decide(self, entry: str, plan: Plan, args: tuple) -> bool:
        with self._lock:
            key = (plan.variant, plan.shape_class)
            if key in self._picks:
                return self._picks[key]
            test = self.store.selftest(plan.variant)
            if test is None:
                reason = self._selftest(entry, plan.variant, args)
                test = self.store.record_selftest(entry, plan.variant, reason)
                if reason is not None:
                    self._notice(entry, plan.variant, "failed its self-test", reason)
            use = test["pass"]
            if use and self.mode == AUTO:
                timing = self.store.timing(*key)
                if timing is None:
                    try:
                        timing = self.store.record_timing(*key, *self._time(entry, args))
                    except Failed as err:
                        self._fail(entry, plan.variant, f"at the timing shapes ({plan.shape_class}): {err}")
                        return False
                use = timing["pick"] == "kernel"
            self._picks[key] = use
            return use

    def _fail(self, entry: str, variant: str, reason: str) -> None:
        with self._lock:
            self.store.record_selftest(entry, variant, reason)
            for key in self._picks:
                if key[0] == variant:
                    self._picks[key] = False
            self._notice(entry, variant, "failed", reason)

    def _notice(self, entry: str, variant: str, what: str, reason: str) -> None:
        self.notify(f"mlxmodels: the {entry} Metal kernel {variant} {what} on {self.device} ({reason}); using MLX's "
                    f"built-in op. MLXMODELS_KERNELS=off skips our kernels.")

    # -- self-test and timing

    def _selftest(self, entry: str, variant: str, args: tuple) -> Optional[str]:
        """None when the kernel, on small inputs that compile the same variant, equals the built-in (in float32)
        within the dtype's rounding; else why not."""
        e = self.entries[entry]
        try:
            sample = e.sample(*args)
            plan = e.plan(*sample)
            if plan.variant != variant:  # it would vouch for another kernel than the one the call compiles
                return f"the self-test's inputs compile {plan.variant}"
            got = plan.run(self.runner)
            mx.eval(got)
            want = e.builtin(*in_float32(sample))
            mx.eval(want)
            return mismatch(got, want, sample[0].dtype)  # every entry point returns its first argument's dtype
        except Exception as err:
            return first_line(err)

    def _time(self, entry: str, args: tuple) -> Tuple[float, float]:
        """(kernel, built-in) median microseconds per call on random inputs of the call's shape class."""
        e = self.entries[entry]
        try:
            timing = e.timing(*args)
            plan = e.plan(*timing)
            kernel = lambda: plan.run(self.runner)  # noqa: E731
            builtin = lambda: e.builtin(*timing)  # noqa: E731
            for _ in range(WARMUP):
                mx.eval(kernel())
                mx.eval(builtin())
            k, b = [], []
            for _ in range(RUNS):
                k.append(self._once(kernel))
                b.append(self._once(builtin))
        except Exception as err:
            raise Failed(first_line(err)) from err
        return median(k) * 1e6, median(b) * 1e6

    def _once(self, fn: Callable[[], mx.array]) -> float:
        start = self.clock()
        mx.eval(fn())
        return self.clock() - start

    # -- for `mlxm doctor`

    def check(self, entry: str, args: tuple) -> dict:
        """Self-test and time the kernel for these inputs now, whatever the mode, and record the verdict; no notice.
        Raises plan.Unsupported when the kernel does not take them."""
        plan = self.entries[entry].plan(*args)
        row = {"entry": entry, "variant": plan.variant, "shape_class": plan.shape_class, "selftest": "pass",
               "reason": None, "kernel_us": None, "builtin_us": None, "pick": "builtin"}
        with self._lock:
            reason = self._selftest(entry, plan.variant, args)
            if reason is None:
                try:
                    kernel_us, builtin_us = self._time(entry, args)
                    t = self.store.record_timing(plan.variant, plan.shape_class, kernel_us, builtin_us)
                    row.update(kernel_us=t["kernel_us"], builtin_us=t["builtin_us"], pick=t["pick"])
                except Failed as err:
                    reason = f"at the timing shapes ({plan.shape_class}): {err}"
            if reason is not None:
                row.update(selftest="fail", reason=reason)
            self.store.record_selftest(entry, plan.variant, reason)
            for key in [k for k in self._picks if k[0] == plan.variant]:
                del self._picks[key]  # decided again from the verdicts just made
        return row

    def verdicts(self) -> list:
        """Every verdict this dispatch knows, made in this process or read from the cache: one row per
        (variant, shape class) timed, or per variant when it has no timing (failed, or mode on)."""
        tests, times = self.store.records()
        by_variant: Dict[str, list] = {}
        for t in times:
            by_variant.setdefault(t["variant"], []).append(t)
        rows = []
        for s in tests:
            base = {"entry": s["entry"], "variant": s["variant"], "selftest": "pass" if s["pass"] else "fail",
                    "reason": s["reason"]}
            timed = by_variant.get(s["variant"], []) if s["pass"] else []
            for t in timed:
                rows.append(dict(base, shape_class=t["shape_class"], kernel_us=t["kernel_us"],
                                 builtin_us=t["builtin_us"], pick=t["pick"]))
            if not timed:
                rows.append(dict(base, shape_class=None, kernel_us=None, builtin_us=None,
                                 pick="kernel" if s["pass"] else "builtin"))
        return rows


_current: Optional[Dispatch] = None


def current() -> Dispatch:
    """The process's dispatch (made on first use; `testing.simulate_metal` swaps it)."""
    global _current
    if _current is None:
        _current = Dispatch()
    return _current


def swap(dispatch: Optional[Dispatch]) -> Optional[Dispatch]:
    """Make `dispatch` the process's (None: a fresh default one on next use); returns the one it replaces."""
    global _current
    previous, _current = _current, dispatch
    return previous


def device_name() -> str:
    return current().device
