"""A kernel launch as data, so the Metal GPU and the emulator run exactly the same thing.

`KernelDef` names a body in this folder and its parameters; `Launch` is one call of it (inputs, template
arguments, grid, threadgroup, outputs). `run_metal` hands a launch to `mx.fast.metal_kernel`; the emulator
(`metal_kernels.emulator`) writes the same signature MLX writes and runs the same body on the CPU.
"""

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import mlx.core as mx

HERE = Path(__file__).parent
TemplateArg = Union[mx.Dtype, int, bool]


@dataclass(frozen=True)
class KernelDef:
    name: str  # MLX's kernel name (it becomes custom_kernel_<name>_...)
    file: str  # the body, in metal_kernels/
    input_names: Tuple[str, ...]
    output_names: Tuple[str, ...]
    header_file: Optional[str] = None  # helpers placed before the signature

    @property
    def source(self) -> str:
        return _read(self.file)

    @property
    def header(self) -> str:
        return _read(self.header_file) if self.header_file else ""


@dataclass
class Launch:
    kernel: KernelDef
    inputs: List[mx.array]  # in kernel.input_names order
    template: List[Tuple[str, TemplateArg]]
    grid: Tuple[int, int, int]  # threads, not threadgroups
    threadgroup: Tuple[int, int, int]
    output_shapes: List[Tuple[int, ...]]
    output_dtypes: List[mx.Dtype]
    init_value: Optional[float] = None
    source: Optional[str] = field(default=None, repr=False)  # override the body (tests: mutated copies)

    @property
    def body(self) -> str:
        return self.kernel.source if self.source is None else self.source


@lru_cache(maxsize=None)
def _read(file: str) -> str:
    return (HERE / file).read_text()


@lru_cache(maxsize=None)
def _compiled(name: str, inputs: Tuple[str, ...], outputs: Tuple[str, ...], source: str, header: str):
    return mx.fast.metal_kernel(name=name, input_names=list(inputs), output_names=list(outputs), source=source,
                                header=header)


def metal_kernel(launch: Launch):
    k = launch.kernel
    return _compiled(k.name, k.input_names, k.output_names, launch.body, k.header)


def run_metal(launch: Launch, verbose: bool = False) -> Sequence[mx.array]:
    """Run on the Metal GPU (or record the call when traced under mx.export_function)."""
    return metal_kernel(launch)(
        inputs=launch.inputs,
        template=launch.template,
        grid=launch.grid,
        threadgroup=launch.threadgroup,
        output_shapes=launch.output_shapes,
        output_dtypes=launch.output_dtypes,
        init_value=launch.init_value,
        verbose=verbose,
    )
