"""The kernel source MLX generates around a body, written the way `mx.fast.metal_kernel` writes it.

MLX (mlx/backend/metal/custom_kernel.cpp) prepends the header, a template line, a `[[kernel]] void` signature
with one `[[buffer(i)]]` per input, per `<input>_shape/_strides/_ndim` whose name appears in the body, per
output, then the thread-position attributes whose names appear in the body, and appends an explicit
instantiation. `mlx_source` captures what MLX itself prints (it does so on Linux too when the call is traced
under `mx.export_function`), so a test can prove `write_source` is exact.
"""

import os
import re
import tempfile
from dataclasses import dataclass
from typing import List, Tuple

import mlx.core as mx

from ..launch import MAX_CONSTANT_ARRAY_SIZE, Launch, kernel_name, run_metal, template_def, type_name

# (attribute, Metal type), in the order MLX adds them.
ATTRIBUTES = [
    ("dispatch_quadgroups_per_threadgroup", "uint"), ("dispatch_simdgroups_per_threadgroup", "uint"),
    ("dispatch_threads_per_threadgroup", "uint3"), ("grid_origin", "uint3"), ("grid_size", "uint3"),
    ("quadgroup_index_in_threadgroup", "uint"), ("quadgroups_per_threadgroup", "uint"),
    ("simdgroup_index_in_threadgroup", "uint"), ("simdgroups_per_threadgroup", "uint"),
    ("thread_execution_width", "uint"), ("thread_index_in_quadgroup", "uint"),
    ("thread_index_in_simdgroup", "uint"), ("thread_index_in_threadgroup", "uint"),
    ("thread_position_in_grid", "uint3"), ("thread_position_in_threadgroup", "uint3"),
    ("threadgroup_position_in_grid", "uint3"), ("threadgroups_per_grid", "uint3"), ("threads_per_grid", "uint3"),
    ("threads_per_simdgroup", "uint"), ("threads_per_threadgroup", "uint3"),
]


def _template_kind(arg) -> str:
    return "bool" if isinstance(arg, bool) else "int" if isinstance(arg, int) else "typename"


@dataclass(frozen=True)
class Param:
    """One parameter of the generated signature; `buffer` is None for thread-position attributes."""

    name: str
    ctype: str  # element type (buffers) or Metal type (attributes)
    kind: str  # input | scalar | shape | strides | ndim | output | attribute
    buffer: int = -1


def params(launch: Launch) -> List[Param]:
    """The signature's parameters in order, as MLX derives them from the body and the inputs."""
    body, k = launch.body, launch.kernel
    out, index = [], 0
    for name, a in zip(k.input_names, launch.inputs):
        out.append(Param(name, type_name(a.dtype), "scalar" if a.ndim == 0 else "input", index))
        index += 1
        if a.ndim > 0:
            for suffix, ctype in (("shape", "int"), ("strides", "int64_t"), ("ndim", "int")):
                if f"{name}_{suffix}" in body:
                    out.append(Param(f"{name}_{suffix}", ctype, suffix, index))
                    index += 1
    for name, dtype in zip(k.output_names, launch.output_dtypes):
        out.append(Param(name, type_name(dtype), "output", index))
        index += 1
    out += [Param(attr, ctype, "attribute") for attr, ctype in ATTRIBUTES if attr in body]
    return out


def write_source(launch: Launch) -> str:
    """The full kernel source MLX compiles for this launch (without the utils.h it prepends)."""
    k, name = launch.kernel, kernel_name(launch)
    ps = params(launch)
    n_attrs = sum(p.kind == "attribute" for p in ps)
    src = k.header
    if launch.template:
        src += "template <" + ", ".join(f"{_template_kind(v)} {n}" for n, v in launch.template) + ">\n"
    src += f"[[kernel]] void {name}(\n"
    sizes = {n: a for n, a in zip(k.input_names, launch.inputs)}
    for p in ps:
        if p.kind in ("input", "scalar"):
            a = sizes[p.name]
            space = "constant" if a.size < MAX_CONSTANT_ARRAY_SIZE else "device"
            ref = "&" if p.kind == "scalar" else "*"
            src += f"  const {space} {p.ctype}{ref} {p.name} [[buffer({p.buffer})]],\n"
        elif p.kind in ("shape", "strides", "ndim"):
            ref = "&" if p.kind == "ndim" else "*"
            src += f"  const constant {p.ctype}{ref} {p.name} [[buffer({p.buffer})]],\n"
        elif p.kind == "output":
            src += f"  device {p.ctype}* {p.name} [[buffer({p.buffer})]]"
            # MLX compares the buffer index (which counts shape buffers) with the number of inputs and outputs.
            last = not (p.buffer < len(launch.inputs) + len(k.output_names) - 1 or n_attrs > 0)
            src += ") {\n" if last else ",\n"
    attrs = [p for p in ps if p.kind == "attribute"]
    for i, p in enumerate(attrs):
        src += f"  {p.ctype} {p.name} [[{p.name}]]" + (",\n" if i < len(attrs) - 1 else ") {\n")
    src += launch.body + "\n}\n"
    if launch.template:
        inst = name + template_def(launch)
        src += f'\ntemplate [[host_name("{name}")]] [[kernel]] decltype({inst}) {inst};\n'
    return src


def mlx_source(launch: Launch) -> str:
    """What MLX prints as the generated source when this launch is traced under mx.export_function."""
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "stdout")
        fd = os.open(log, os.O_WRONLY | os.O_CREAT)
        saved = os.dup(1)
        try:
            os.dup2(fd, 1)
            mx.export_function(os.path.join(tmp, "k.mlxfn"), lambda *xs: run_metal(_with_inputs(launch, xs), True),
                               *launch.inputs)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(fd)
        text = open(log).read()
    match = re.search(r"Generated source code for `[^`]*`:\n```\n(.*)\n```\n", text, re.S)
    if match is None:
        raise RuntimeError(f"MLX printed no generated source; it printed: {text[:500]!r}")
    return match.group(1)


def _with_inputs(launch: Launch, xs: Tuple[mx.array, ...]) -> Launch:
    from dataclasses import replace

    return replace(launch, inputs=list(xs))
