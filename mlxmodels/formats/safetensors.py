"""Safetensors, read and written by us: a validating reader over mmap and a streaming sharded writer.

The format: an 8-byte little-endian header length N, N bytes of JSON (`{name: {dtype, shape, data_offsets}}`,
optional `__metadata__`), then the data; offsets are relative to the start of the data. Nothing in a file is
trusted: the header length is bounded by the file, the header must be a JSON object, dtypes must be known,
shape x itemsize must equal the byte span, spans must lie inside the data and not overlap. A folder's
`model.safetensors.index.json` must agree with its shards. Every problem is a `SafetensorsError` that names the
file (and tensor) and says what to do.

Reading copies one tensor at a time out of the mapping and then drops the mapped pages, so the resident memory of
a reader is one tensor, whatever the file size. Writing streams too: the caller plans every output tensor (name,
dtype, shape) up front, so each shard's header is written first and tensors are appended as they are produced.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import mlx.core as mx
import numpy as np

from mlxmodels.errors import ModelError

from . import folder as files
from .folder import open_regular

MAX_HEADER = 100 << 20  # the reference implementation's limit
MAX_DIM, MAX_DIMS = (1 << 31) - 1, 8  # MLX keeps each dimension in an int32; weights have at most 4 dims
INDEX = "model.safetensors.index.json"
PAGE = mmap.PAGESIZE
CHUNK = 64 << 20  # bytes copied out of the mapping between page releases

# name -> (itemsize, NumPy dtype of the raw bytes, MLX dtype after a bit-cast view)
DTYPES = {
    "F64": (8, np.float64, mx.float64),
    "F32": (4, np.float32, mx.float32),
    "F16": (2, np.float16, mx.float16),
    "BF16": (2, np.uint16, mx.bfloat16),  # NumPy has no bfloat16: read the bits, view them in MLX
    "F8_E4M3": (1, np.uint8, mx.uint8),  # kept as bits; quantize/fp8.py dequantizes with its block scales
    "I64": (8, np.int64, mx.int64),
    "I32": (4, np.int32, mx.int32),
    "I16": (2, np.int16, mx.int16),
    "I8": (1, np.int8, mx.int8),
    "U64": (8, np.uint64, mx.uint64),
    "U32": (4, np.uint32, mx.uint32),
    "U16": (2, np.uint16, mx.uint16),
    "U8": (1, np.uint8, mx.uint8),
    "BOOL": (1, np.bool_, mx.bool_),
}
MX_NAMES = {mx.float64: "F64", mx.float32: "F32", mx.float16: "F16", mx.bfloat16: "BF16", mx.int64: "I64",
            mx.int32: "I32", mx.int16: "I16", mx.int8: "I8", mx.uint64: "U64", mx.uint32: "U32",
            mx.uint16: "U16", mx.uint8: "U8", mx.bool_: "BOOL"}
NP_NAMES = {np.dtype(v[1]): k for k, v in DTYPES.items() if k not in ("BF16", "F8_E4M3")}


class SafetensorsError(ModelError):
    """A safetensors file or index that is damaged, truncated or inconsistent."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple
    begin: int  # byte offsets relative to the start of the data
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


REDOWNLOAD = "the file is damaged or not safetensors; re-download or re-export it"


def parse_header(raw: bytes, data_len: int, where: str) -> tuple[dict, dict]:
    """Header bytes + the length of the data that follows -> ({name: TensorInfo}, metadata). Validates all of it."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SafetensorsError(f"{where}: header is not JSON ({type(e).__name__}); {REDOWNLOAD}") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{where}: header is not a JSON object; {REDOWNLOAD}")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise SafetensorsError(f"{where}: __metadata__ is not a JSON object; {REDOWNLOAD}")
    tensors = {}
    for name, entry in header.items():
        tensors[name] = _entry(name, entry, data_len, where)
    spans = sorted((t.begin, t.end, n) for n, t in tensors.items() if t.end > t.begin)
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise SafetensorsError(f"{where}: tensors {n0!r} and {n1!r} overlap (bytes {b0}-{e0} and {b1}-{e1}); "
                                   f"{REDOWNLOAD}")
    return tensors, metadata


def _entry(name: str, entry, data_len: int, where: str) -> TensorInfo:
    what = f"{where}: tensor {name!r}"
    if not name:
        raise SafetensorsError(f"{where}: a tensor has an empty name; {REDOWNLOAD}")
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise SafetensorsError(f"{what} needs dtype, shape and data_offsets; {REDOWNLOAD}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise SafetensorsError(f"{what} has unknown dtype {dtype!r} (known: {', '.join(DTYPES)}); "
                               "convert the checkpoint to one of them first")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise SafetensorsError(f"{what} has shape {str(shape)[:80]}, not a list of non-negative integers; {REDOWNLOAD}")
    if len(shape) > MAX_DIMS or any(d > MAX_DIM for d in shape):  # MLX's shapes are int32, whatever the bytes
        raise SafetensorsError(f"{what} has shape {str(shape)[:80]}: more than {MAX_DIMS} dimensions or one over "
                               f"{MAX_DIM}, which MLX cannot hold; {REDOWNLOAD}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise SafetensorsError(f"{what} has data_offsets {offsets!r}, not [begin, end]; {REDOWNLOAD}")
    begin, end = offsets
    if not begin <= end <= data_len:
        raise SafetensorsError(f"{what} has data_offsets [{begin}, {end}] outside the {data_len} bytes of data; "
                               "the file is truncated or damaged, re-download it")
    need = math.prod(shape) * DTYPES[dtype][0]
    if need != end - begin:
        raise SafetensorsError(f"{what}: shape {shape} of {dtype} needs {need} bytes but its data_offsets span "
                               f"{end - begin}; {REDOWNLOAD}")
    return TensorInfo(dtype, tuple(shape), begin, end)


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def parse_prefix(blob: bytes, file_size: int, where: str) -> int:
    """The header length from the first 8 bytes, checked against the file size."""
    if file_size < 8 or len(blob) < 8:
        raise SafetensorsError(f"{where}: truncated ({file_size} bytes, shorter than the 8-byte header length); "
                               "re-download it")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > file_size - 8:
        raise SafetensorsError(f"{where}: header length {n} runs past the end of the file ({file_size} bytes); "
                               "the file is truncated or not safetensors, re-download it")
    if n > MAX_HEADER:
        raise SafetensorsError(f"{where}: header length {n} is over the {MAX_HEADER >> 20} MB limit; {REDOWNLOAD}")
    return n


def parse_bytes(blob: bytes, where: str = "<bytes>") -> tuple[dict, dict]:
    """A whole file held in memory -> (tensors, metadata); the same checks as reading a file (used by the fuzz test)."""
    n = parse_prefix(blob, len(blob), where)
    return parse_header(blob[8:8 + n], len(blob) - 8 - n, where)


class SafetensorsFile:
    """One validated file; tensors are copied out of an mmap one at a time (`array`)."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            with open_regular(self.path) as f:  # never blocks: a FIFO or device named *.safetensors is refused
                size = os.fstat(f.fileno()).st_size
                n = parse_prefix(f.read(8), size, str(self.path))
                raw = f.read(n)
        except OSError as e:
            raise SafetensorsError(f"cannot read {self.path}: {e.strerror or e}") from None
        self.data_start = 8 + n
        self.tensors, self.metadata = parse_header(raw, size - self.data_start, str(self.path))
        self._map: Optional[mmap.mmap] = None

    def _mapping(self) -> mmap.mmap:
        if self._map is None:
            with open_regular(self.path) as f:
                if os.fstat(f.fileno()).st_size < self.data_start + max((t.end for t in self.tensors.values()),
                                                                         default=0):
                    raise SafetensorsError(f"{self.path} shrank while it was being read; re-download it")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def array(self, name: str, part: Optional[tuple] = None) -> mx.array:
        """The tensor as an MLX array (F8_E4M3 as its uint8 bits). Copied from the mapping straight into MLX's
        buffer a chunk at a time, each chunk's mapped pages released after: resident memory is the tensor once,
        not twice, however large the file. part=(axis, start, stop): only that slice is copied (a rank's shard)."""
        if part is not None:
            return self._part(name, *part)
        info = self.tensors[name]
        itemsize, np_dtype, mx_dtype = DTYPES[info.dtype]
        raw = mx.bool_ if np_dtype is np.bool_ else mx.array(np.zeros(0, np_dtype)).dtype
        out = mx.zeros(info.shape, dtype=raw)
        if info.nbytes == 0:
            return out.view(mx_dtype) if raw != mx_dtype else out
        mx.eval(out)
        dst = np.asarray(out)
        m, start = self._mapping(), self.data_start + info.begin
        if dst.flags.c_contiguous and dst.flags.writeable and dst.nbytes == info.nbytes:
            flat = dst.reshape(-1).view(np.uint8)
            for lo in range(0, info.nbytes, CHUNK):
                hi = min(lo + CHUNK, info.nbytes)
                flat[lo:hi] = np.frombuffer(m, dtype=np.uint8, count=hi - lo, offset=start + lo)
                self._release(start + lo, start + hi)
            del flat, dst
        else:  # not expected from MLX, but never write through a view we do not understand
            del dst
            view = np.frombuffer(m, dtype=np_dtype, count=math.prod(info.shape), offset=start).reshape(info.shape)
            out = mx.array(view)
            mx.eval(out)
            del view
            self._release(start, start + info.nbytes)
        return out.view(mx_dtype) if raw != mx_dtype else out

    def _part(self, name: str, axis: int, lo: int, hi: int) -> mx.array:
        """tensor[..., lo:hi, ...] along `axis`, copied out of a strided view of the mapping: only the pages that
        hold the slice are read."""
        info = self.tensors[name]
        itemsize, np_dtype, mx_dtype = DTYPES[info.dtype]
        if np_dtype is np.bool_ or not 0 <= lo <= hi <= info.shape[axis]:
            raise SafetensorsError(f"{self.path}: cannot read {name}[{lo}:{hi}] along axis {axis} of "
                                   f"{tuple(info.shape)}")
        m, start = self._mapping(), self.data_start + info.begin
        view = np.ndarray(tuple(info.shape), dtype=np_dtype, buffer=m, offset=start)
        out = mx.array(np.ascontiguousarray(view[(slice(None),) * axis + (slice(lo, hi),)]))
        mx.eval(out)
        del view
        self._release(start, start + info.nbytes)
        return out.view(mx_dtype) if out.dtype != mx_dtype else out

    def _release(self, begin: int, end: int):
        """Drop the mapped pages of a span we have copied, so resident memory stays one tensor, not the file."""
        if hasattr(mmap, "MADV_DONTNEED") and self._map is not None:
            lo, hi = begin - begin % PAGE, min(len(self._map), -(-end // PAGE) * PAGE)
            if hi > lo:
                self._map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def close(self):
        if self._map is not None:
            self._map.close()
            self._map = None


class Checkpoint:
    """A folder's safetensors shards, checked against its index: every tensor in exactly one shard."""

    def __init__(self, folder):
        self.folder = Path(folder)
        listed = None
        if files.exists(self.folder, INDEX):
            listed = read_index(self.folder)
            names = sorted(set(listed.values()))
            missing = [s for s in names if not files.exists(self.folder, s)]
            if missing:
                raise SafetensorsError(f"{self.folder} is missing shard(s) {', '.join(missing)} listed in {INDEX}; "
                                       "re-download them")
        else:
            names = ([p.name for p in sorted(self.folder.glob("model*.safetensors"))]
                     or [p.name for p in sorted(self.folder.glob("*.safetensors"))])
        if not names:
            raise SafetensorsError(f"{self.folder} has no *.safetensors weights; point at a Hugging Face model "
                                   "folder (convert .bin checkpoints to safetensors first)")
        files_ = [files.member(self.folder, s, INDEX if listed is not None else "") for s in names]
        self.files = [SafetensorsFile(f) for f in files_]
        self.where: dict[str, SafetensorsFile] = {}
        for f in self.files:
            for name in f.tensors:
                if name in self.where:
                    raise SafetensorsError(f"tensor {name!r} is in two shards, {self.where[name].path.name} and "
                                           f"{f.path.name}; the folder is inconsistent, re-download it")
                self.where[name] = f
        if listed is not None:
            for name, shard in listed.items():
                if self.where.get(name) is None or self.where[name].path.name != shard:
                    raise SafetensorsError(f"{INDEX} lists tensor {name!r} in {shard}, which does not hold it; "
                                           "the index and the shards disagree, re-download them")
            extra = sorted(self.where.keys() - listed.keys())
            if extra:
                raise SafetensorsError(f"{self.where[extra[0]].path.name} holds tensor {extra[0]!r}, which {INDEX} "
                                       "does not list; the index and the shards disagree, re-download them")

    def info(self, name: str) -> TensorInfo:
        return self.where[name].tensors[name]

    def array(self, name: str, part: Optional[tuple] = None) -> mx.array:
        return self.where[name].array(name, part)

    def close(self):
        for f in self.files:
            f.close()


def read_index(folder: Path) -> dict:
    """The index's weight_map {tensor: shard}, every shard a plain file name in the folder."""
    path = files.member(folder, INDEX)
    index = files.read_json(path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise SafetensorsError(f"{path} has no weight_map object; re-download it")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard.endswith(".safetensors") or Path(shard).name != shard \
                or shard.startswith("."):
            raise SafetensorsError(f"{path} puts tensor {name!r} in {str(shard)[:80]!r}, not a shard file name in "
                                   "the folder; re-download it")
    return weight_map


# ------------------------------------------------------------------------------------------------ writing


def dtype_name(dtype) -> str:
    if dtype not in MX_NAMES:
        raise SafetensorsError(f"cannot write dtype {dtype} to safetensors")
    return MX_NAMES[dtype]


def nbytes(dtype: str, shape: Sequence[int]) -> int:
    return math.prod(shape) * DTYPES[dtype][0]


def header_bytes(entries: Iterable[tuple[str, str, tuple]], metadata: Optional[dict] = None) -> bytes:
    """entries (name, dtype, shape) in file order -> the 8-byte length + JSON header, padded to 8 bytes."""
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, dtype, shape in entries:
        size = nbytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def as_bytes(a) -> memoryview:
    """An evaluated MLX (or NumPy) array -> its C-order bytes."""
    if isinstance(a, mx.array):
        if a.dtype not in MX_NAMES:
            raise SafetensorsError(f"cannot write dtype {a.dtype} to safetensors")
        if a.dtype == mx.bfloat16:
            a = a.view(mx.uint16)
        a = np.asarray(a)
    return memoryview(np.ascontiguousarray(a).reshape(-1)).cast("B")


def save_file(path, tensors: dict, metadata: Optional[dict] = None):
    """Write a dict of MLX arrays (or NumPy arrays with a dtype name: {name: (array, "F8_E4M3")}) as one file."""
    entries, arrays = [], []
    for name, a in tensors.items():
        if isinstance(a, tuple):
            a, dtype = a
        elif isinstance(a, mx.array):
            dtype = dtype_name(a.dtype)
        else:
            dtype = NP_NAMES.get(np.dtype(a.dtype))
            if dtype is None:
                raise SafetensorsError(f"cannot write NumPy dtype {a.dtype} to safetensors")
        entries.append((name, dtype, tuple(a.shape)))
        arrays.append(a)
    mx.eval([a for a in arrays if isinstance(a, mx.array)])
    with open(path, "wb") as f:
        f.write(header_bytes(entries, metadata))
        for a in arrays:
            f.write(as_bytes(a))


class ShardWriter:
    """Writes a planned list of tensors into shards of at most `max_bytes` (a bigger tensor gets a shard of its own),
    streaming: each shard's header is written when it opens, tensors are appended in plan order."""

    def __init__(self, folder, plan: Sequence[tuple[str, str, tuple]], max_bytes: int, metadata=None,
                 prefix: str = "model"):
        self.folder = Path(folder)
        self.shards: list[list] = []
        size = 0
        for entry in plan:
            n = nbytes(entry[1], entry[2])
            if not self.shards or (size + n > max_bytes and self.shards[-1]):
                self.shards.append([])
                size = 0
            self.shards[-1].append(entry)
            size += n
        count = len(self.shards)
        self.names = [f"{prefix}.safetensors" if count == 1 else f"{prefix}-{i + 1:05d}-of-{count:05d}.safetensors"
                      for i in range(count)]
        self.metadata = metadata
        self.total_size = sum(nbytes(d, s) for _, d, s in plan)
        self.weight_map = {name: self.names[i] for i, shard in enumerate(self.shards) for name, _, _ in shard}
        self._queue = [(i, e) for i, shard in enumerate(self.shards) for e in shard]
        self._pos = 0
        self._file = None
        self._file_index = -1

    def write(self, name: str, a: mx.array):
        if self._pos >= len(self._queue):
            raise SafetensorsError(f"tensor {name!r} was not planned (all planned tensors are written)")
        shard, (want, dtype, shape) = self._queue[self._pos]
        got = (name, dtype_name(a.dtype), tuple(a.shape))
        if got != (want, dtype, tuple(shape)):
            raise SafetensorsError(f"tensor {got} does not match the plan's next tensor {(want, dtype, tuple(shape))}")
        if shard != self._file_index:
            self._close()
            self._file = open(self.folder / self.names[shard], "wb")
            self._file_index = shard
            self._file.write(header_bytes(self.shards[shard], self.metadata))
        self._file.write(as_bytes(a))
        self._pos += 1

    def _close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def finish(self, total_parameters: Optional[int] = None):
        """Close the last shard and write the index (mlx-lm writes one even for a single shard)."""
        if self._pos != len(self._queue):
            missing = self._queue[self._pos][1][0]
            raise SafetensorsError(f"conversion ended before tensor {missing!r} was written")
        self._close()
        meta = {"total_size": self.total_size}
        if total_parameters is not None:
            meta["total_parameters"] = total_parameters
        index = {"metadata": meta, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.folder / INDEX).write_text(json.dumps(index, indent=4))

    def abort(self):
        self._close()
