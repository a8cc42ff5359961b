"""A kernel entry point's call as data: what the dispatch needs to self-test it, time it and run it.

Each kernel module gives, per entry point E (qmv, qmv_swiglu, paged_attention, paged_mla), three functions of the
entry point's own arguments:

    E_plan(*args) -> Plan          raises Unsupported when the kernel does not take these inputs
    E_sample(*args) -> args        small random inputs, evaluated, whose plan has the same variant: the self-test
    E_timing(*args) -> args        random inputs of the same shape class: what the speed check times

A plan's `run(runner)` makes its launches in order through `runner` (`launch.run_metal` on a Mac; a stand-in under
`testing.simulate_metal`) and returns the entry point's output. Plans read shapes and dtypes only, never values,
so they can be made while `mx.compile` traces.
"""

from dataclasses import dataclass
from typing import Callable, Sequence

import mlx.core as mx

from .launch import Launch, kernel_name

Runner = Callable[[Launch], Sequence[mx.array]]


class Unsupported(ValueError):
    """The kernel does not take these inputs (shape, dtype, bits); the built-in path runs instead."""


@dataclass(frozen=True)
class Plan:
    variant: str  # what Metal compiles: its launches' kernel names; a self-test vouches for exactly this
    shape_class: str  # what one speed verdict holds for within the variant
    run: Callable[[Runner], mx.array]


def variant(*launches: Launch) -> str:
    return "+".join(kernel_name(x) for x in launches)


def pow2_at_least(n: int) -> int:
    """Shape classes bucket sizes that vary step to step (contexts) so that a verdict covers many steps."""
    return 1 << max(0, (int(n) - 1).bit_length())
