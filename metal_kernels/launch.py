"""A kernel launch as data, so the Metal GPU and the emulator run exactly the same thing.

`KernelDef` names a body in this folder and its parameters; `Launch` is one call of it (inputs, template
arguments, grid, threadgroup, outputs). `kernel_name` is the name MLX compiles a launch under (template values,
dtypes, which inputs go to the constant address space), so the dispatch keys its verdicts by it. `run_metal`
hands a launch to `mx.fast.metal_kernel`; the emulator (`metal_kernels.emulator`) writes the same signature MLX
writes and runs the same body on the CPU.
"""

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import mlx.core as mx

HERE = Path(__file__).parent
TemplateArg = Union[mx.Dtype, int, bool]

MAX_CONSTANT_ARRAY_SIZE = 8  # inputs with fewer elements are passed in the constant address space

TYPE_NAMES = {
    mx.bool_: "bool", mx.int8: "int8_t", mx.int16: "int16_t", mx.int32: "int32_t", mx.int64: "int64_t",
    mx.uint8: "uint8_t", mx.uint16: "uint16_t", mx.uint32: "uint32_t", mx.uint64: "uint64_t",
    mx.float16: "float16_t", mx.bfloat16: "bfloat16_t", mx.float32: "float",
}


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


def type_name(dtype) -> str:
    if dtype not in TYPE_NAMES:
        raise TypeError(f"no Metal kernel parameter type for {dtype}")
    return TYPE_NAMES[dtype]


def _template_value(arg) -> str:
    if isinstance(arg, bool):  # before int: bool is an int in Python; C++ streams a bool as 1/0
        return "1" if arg else "0"
    if isinstance(arg, int):
        return str(arg)
    return type_name(arg)


def kernel_name(launch: Launch) -> str:
    """Memoised: the dispatch asks for it on every decode-step call, and building the string costs ~5 us."""
    spaces = tuple((a.dtype, "s" if a.ndim == 0 else "c" if a.size < MAX_CONSTANT_ARRAY_SIZE else "")
                   for a in launch.inputs)
    return _kernel_name(launch.kernel.name, tuple(v for _, v in launch.template), spaces, tuple(launch.output_dtypes))


@lru_cache(maxsize=4096)
def _kernel_name(kernel: str, template: tuple, spaces: tuple, outputs: tuple) -> str:
    name = "custom_kernel_" + kernel
    if template:
        # MLX turns "<", ">", ", " (and, since 0.3x, the "-" of a negative int) into "_" and drops the last one.
        name += "_" + re.sub(r"<|>|, |-", "_", _template_def(template))[:-1]
    for dtype, space in spaces:
        name += "_" + type_name(dtype) + space
    for d in outputs:
        name += "_" + type_name(d)
    return name


def template_def(launch: Launch) -> str:
    return _template_def(tuple(v for _, v in launch.template))


def _template_def(values: tuple) -> str:
    return "<" + ", ".join(_template_value(v) for v in values) + ">"


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
