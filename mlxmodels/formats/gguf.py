"""GGUF, read by us: a validating reader of llama.cpp's single-file format (header, metadata, tensor table, data).

The layout (little-endian): magic "GGUF", version (u32; 2 and 3 use 64-bit counts), tensor count and metadata count
(u64), the metadata as (key string, value type u32, value) entries, the tensor table as (name, n_dims u32, n_dims
u64 dimensions innermost first, ggml type u32, offset u64) entries, then padding to `general.alignment` (32 when
absent) and the data; tensor offsets are relative to the data and aligned. A string is a u64 length and UTF-8
bytes; an array is an element type u32, a u64 count and the elements.

Nothing in a file is trusted: every length and count is checked against the bytes that remain before anything is
allocated for it, counts have caps far above any real model's (so a crafted 5 GB file of empty strings cannot make
billions of Python objects), types must be known, a tensor's byte size follows from its ggml type's block layout
(the `gguf` package's table) and must lie inside the data, aligned, without overlapping another. Every problem is
one `GGUFError` naming the file, the key or tensor, and what to do. The header is parsed from an mmap, so nothing
but what it describes is read; tensor bytes are copied out one tensor at a time (`raw`).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from mlxmodels.errors import ModelError

from .folder import open_regular

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # version 1 used 32-bit counts and lengths; llama.cpp dropped it in 2023
MAX_KV, MAX_TENSORS = 1 << 16, 1 << 20  # real files: ~50 keys; DeepSeek-V3 has ~1,900 tensors
MAX_ARRAY = 1 << 24  # elements in one array: the largest vocabularies have ~260k tokens and ~500k merges
MAX_DIMS, MAX_DIM = 4, (1 << 31) - 1  # ggml tensors have at most 4 dims; MLX keeps each in an int32
MAX_NAME = 1 << 16  # keys and tensor names (ggml's own limit for tensor names is 64 bytes)
DEFAULT_ALIGNMENT = 32
REDOWNLOAD = "the file is damaged or not GGUF; re-download it"

# value type -> (struct code, NumPy dtype) for the fixed-size scalars; 7 is bool, 8 string, 9 array
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


class GGUFError(ModelError):
    """A GGUF file that is damaged, truncated, crafted or uses something we do not read."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    shape: tuple  # ggml order, innermost (contiguous) dimension first, as the file stores it
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)

    @property
    def rows_shape(self) -> tuple:
        """The shape in NumPy/MLX order (outermost first): (..., rows, row length)."""
        return tuple(reversed(self.shape))


def ggml_types() -> dict:
    """ggml type id -> (block size in elements, bytes per block), from the `gguf` package (llama.cpp's table)."""
    from gguf.constants import GGML_QUANT_SIZES

    return {int(t): sizes for t, sizes in GGML_QUANT_SIZES.items()}


def type_name(ggml_type: int) -> str:
    from gguf.constants import GGMLQuantizationType

    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"


class _Cursor:
    """Reads the header from the mapping, checking that each read fits in the file before making anything."""

    def __init__(self, buf, where: str):
        self.buf, self.pos, self.where = buf, 0, where

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.where}: {what}; {REDOWNLOAD}")

    def take(self, n: int, what: str) -> memoryview:
        if n > len(self.buf) - self.pos:
            raise self.fail(f"{what} runs past the end of the file (needs {n} bytes at offset {self.pos}, the file "
                            f"has {len(self.buf)})")
        view = self.buf[self.pos:self.pos + n]
        self.pos += n
        return view

    def scalar(self, code: str, what: str):
        return struct.unpack(code, self.take(struct.calcsize(code), what))[0]

    def count(self, what: str, cap: int, min_item: int) -> int:
        """A u64 count whose items (at least `min_item` bytes each) must fit in what remains, and under `cap`."""
        n = self.scalar("<Q", what)
        if n > cap:
            raise self.fail(f"{what} is {n}, over the limit of {cap}")
        if min_item and n > (len(self.buf) - self.pos) // min_item:
            raise self.fail(f"{what} is {n}, more than the rest of the file can hold")
        return n

    def string(self, what: str, cap: Optional[int] = None) -> str:
        n = self.scalar("<Q", f"the length of {what}")
        if cap is not None and n > cap:
            raise self.fail(f"{what} is {n} bytes long, over the limit of {cap}")
        raw = self.take(n, what)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} is not UTF-8 (byte {e.start})") from None

    def value(self, vtype: int, what: str, depth: int = 0):
        if vtype in SCALARS:
            return self.scalar(SCALARS[vtype], what)
        if vtype == STRING:
            return self.string(what)
        if vtype == ARRAY:
            return self.array(what, depth)
        raise self.fail(f"{what} has unknown value type {vtype}")

    def array(self, what: str, depth: int):
        if depth >= 2:  # llama.cpp writes flat arrays; one level of nesting is allowed by the format, more is a bomb
            raise self.fail(f"{what} nests arrays more than 2 deep")
        etype = self.scalar("<I", f"the element type of {what}")
        if etype in SCALARS:
            size = struct.calcsize(SCALARS[etype])
            n = self.count(f"the length of {what}", MAX_ARRAY, size)
            dtype = np.dtype(SCALARS[etype].replace("?", "u1"))  # bools as bytes: any non-zero is true
            out = np.frombuffer(self.take(n * size, what), dtype=dtype).copy()
            return out.astype(bool) if etype == 7 else out
        if etype not in (STRING, ARRAY):
            raise self.fail(f"{what} has unknown element type {etype}")
        n = self.count(f"the length of {what}", MAX_ARRAY, 8 if etype == STRING else 12)
        if etype == STRING:
            return [self.string(f"{what}[{i}]") for i in range(n)]
        return [self.array(f"{what}[{i}]", depth + 1) for i in range(n)]


def parse(buf, where: str) -> tuple[int, dict, dict, int]:
    """The bytes of a whole file (a mapping) -> (version, metadata, {name: TensorInfo}, data start)."""
    c = _Cursor(buf, where)
    if len(buf) < 4 or bytes(buf[:4]) != MAGIC:
        raise GGUFError(f"{where} is not a GGUF file (it does not start with 'GGUF'); give a .gguf model file")
    c.pos = 4
    version = c.scalar("<I", "the version")
    if version not in VERSIONS:
        raise GGUFError(f"{where}: GGUF version {version} is not supported (only {VERSIONS}); re-convert the model "
                        "with a current llama.cpp")
    n_tensors = c.count("the tensor count", MAX_TENSORS, 8 + 4 + 4 + 8)
    n_kv = c.count("the metadata count", MAX_KV, 8 + 4)
    metadata = {}
    for i in range(n_kv):
        key = c.string(f"metadata key #{i}", MAX_NAME)
        if key in metadata:
            raise c.fail(f"metadata key {key!r} appears twice")
        metadata[key] = c.value(c.scalar("<I", f"the type of {key!r}"), f"metadata {key!r}")
    entries = []
    for i in range(n_tensors):
        name = c.string(f"the name of tensor #{i}", MAX_NAME)
        n_dims = c.scalar("<I", f"the dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise c.fail(f"tensor {name!r} has {n_dims} dimensions (ggml tensors have 1 to {MAX_DIMS})")
        shape = tuple(c.scalar("<Q", f"the shape of tensor {name!r}") for _ in range(n_dims))
        entries.append((name, shape, c.scalar("<I", f"the type of tensor {name!r}"),
                        c.scalar("<Q", f"the offset of tensor {name!r}")))
    alignment = _alignment(metadata, where)
    data_start = -(-c.pos // alignment) * alignment
    tensors = _tensors(entries, alignment, data_start, len(buf), where)
    return version, metadata, tensors, data_start


def _alignment(metadata: dict, where: str) -> int:
    value = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value <= 0 \
            or value & (value - 1) or value > 1 << 20:
        raise GGUFError(f"{where}: metadata 'general.alignment' is {value!r}, not a power of two up to 2^20; "
                        f"{REDOWNLOAD}")
    return int(value)


def _tensors(entries, alignment: int, data_start: int, file_size: int, where: str) -> dict:
    types = ggml_types()
    data_len = max(file_size - data_start, 0)
    tensors = {}
    for name, shape, ggml_type, offset in entries:
        what = f"{where}: tensor {name!r}"
        if name in tensors:
            raise GGUFError(f"{what} appears twice in the tensor table; {REDOWNLOAD}")
        if ggml_type not in types:
            raise GGUFError(f"{what} has unknown ggml type {ggml_type}; the file is damaged or newer than the "
                            "installed `gguf` package (upgrade it)")
        if any(d > MAX_DIM for d in shape):
            raise GGUFError(f"{what} has shape {list(shape)}: a dimension over {MAX_DIM}, which MLX cannot hold; "
                            f"{REDOWNLOAD}")
        block, block_bytes = types[ggml_type]
        if shape[0] % block:
            raise GGUFError(f"{what}: its rows of {shape[0]} elements are not whole {type_name(ggml_type)} blocks "
                            f"of {block}; {REDOWNLOAD}")
        nbytes = shape[0] // block * block_bytes
        for d in shape[1:]:
            nbytes *= d
        if offset % alignment:
            raise GGUFError(f"{what} starts at offset {offset}, not a multiple of the alignment {alignment}; "
                            f"{REDOWNLOAD}")
        if offset > data_len or nbytes > data_len - offset:
            raise GGUFError(f"{what} (bytes {offset}-{offset + nbytes} of the data) runs past the end of the "
                            f"{data_len} bytes of data; the file is truncated, re-download it")
        tensors[name] = TensorInfo(name, ggml_type, shape, data_start + offset, nbytes)
    spans = sorted((t.offset, t.offset + t.nbytes, n) for n, t in tensors.items() if t.nbytes)
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise GGUFError(f"{where}: tensors {n0!r} and {n1!r} overlap; {REDOWNLOAD}")
    return tensors


class GGUFFile:
    """One validated GGUF file: `metadata` (key -> int, float, bool, str, NumPy array or list), `tensors`
    (name -> TensorInfo), and `raw(name)`, a tensor's bytes as NumPy rows."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            with open_regular(self.path, "give a .gguf model file") as f:
                size = os.fstat(f.fileno()).st_size
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except OSError as e:
            raise GGUFError(f"cannot read {self.path}: {e.strerror or e}") from None
        view = memoryview(self._map)
        try:
            self.version, self.metadata, self.tensors, self.data_start = parse(view, str(self.path))
        finally:
            view.release()

    def get(self, key: str, kind, default=None):
        """A metadata value checked to be `kind` (int, float, str, bool, list); `default` when absent."""
        if key not in self.metadata:
            return default
        value = self.metadata[key]
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is list and isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
        raise GGUFError(f"{self.path}: metadata {key!r} is {type(value).__name__}, not {kind.__name__}; "
                        f"{REDOWNLOAD}")

    def raw(self, name: str) -> np.ndarray:
        """A tensor's bytes, copied out of the mapping, as uint8 rows: (..., rows, bytes per row)."""
        info = self.tensors[name]
        block, block_bytes = ggml_types()[info.ggml_type]
        row_bytes = info.shape[0] // block * block_bytes
        flat = np.frombuffer(self._map, dtype=np.uint8, count=info.nbytes, offset=info.offset).copy()
        if hasattr(mmap, "MADV_DONTNEED") and info.nbytes:  # keep resident memory at one tensor, not the file
            lo, hi = info.offset - info.offset % mmap.PAGESIZE, info.offset + info.nbytes
            self._map.madvise(mmap.MADV_DONTNEED, lo, min(len(self._map), -(-hi // mmap.PAGESIZE) * mmap.PAGESIZE) - lo)
        return flat.reshape(*info.rows_shape[:-1], row_bytes)

    def close(self):
        if isinstance(self._map, mmap.mmap):
            self._map.close()
