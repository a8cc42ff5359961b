"""Our safetensors reader/writer: exact round trips (against MLX's own reader too), every malformed file or index a
SafetensorsError naming the culprit, and a fuzzed header parser that never crashes or hangs."""

import json
import struct
from datetime import timedelta

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxmodels.config import ModelError
from mlxmodels.errors import ModelError
from mlxmodels.formats.safetensors import (DTYPES, INDEX, Checkpoint, SafetensorsError, SafetensorsFile, ShardWriter,
                                  parse_bytes, save_file)


def raw_file(path, header, data=b"", length=None):
    """A file with an arbitrary header (dict -> JSON, or raw bytes) and data; `length` overrides the prefix."""
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(hb) if length is None else length) + hb + data)
    return path


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def sample_tensors():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((5, 7)).astype(np.float32)
    return {
        "a.f32": mx.array(f),
        "a.bf16": mx.array(f).astype(mx.bfloat16),
        "a.f16": mx.array(f).astype(mx.float16),
        "b.i32": mx.array(rng.integers(-9, 9, (3, 4)).astype(np.int32)),
        "b.u32": mx.array(rng.integers(0, 2**32 - 1, (2, 3), dtype=np.uint64).astype(np.uint32)),
        "b.i64": mx.array(rng.integers(-9, 9, (4,)).astype(np.int64)),
        "b.u8": mx.array(rng.integers(0, 255, (6,)).astype(np.uint8)),
        "b.bool": mx.array(rng.integers(0, 2, (3,)).astype(bool)),
        "c.scalar": mx.array(3.5),
        "c.empty": mx.zeros((0, 4)),
    }


def test_round_trip_every_dtype_and_mlx_agrees(tmp_path):
    tensors = sample_tensors()
    save_file(tmp_path / "ours.safetensors", tensors, {"format": "mlx"})
    f = SafetensorsFile(tmp_path / "ours.safetensors")
    assert f.metadata == {"format": "mlx"}
    theirs = mx.load(str(tmp_path / "ours.safetensors"))  # MLX's reader reads our file...
    mx.save_safetensors(str(tmp_path / "mlx.safetensors"), tensors)
    g = SafetensorsFile(tmp_path / "mlx.safetensors")  # ...and ours reads MLX's
    for name, want in tensors.items():
        for got in (f.array(name), theirs[name], g.array(name)):
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert mx.array_equal(got, want).item(), name
    f.close(), g.close()


def test_f8_tensors_read_as_their_bits(tmp_path):
    bits = np.arange(256, dtype=np.uint8).reshape(16, 16)
    save_file(tmp_path / "f8.safetensors", {"w": (bits, "F8_E4M3")})
    f = SafetensorsFile(tmp_path / "f8.safetensors")
    assert f.tensors["w"].dtype == "F8_E4M3"
    np.testing.assert_array_equal(np.array(f.array("w")), bits)


def test_shard_writer_streams_a_plan_into_bounded_shards(tmp_path):
    tensors = {f"t{i}": mx.full((i + 1, 100), i, dtype=mx.float32) for i in range(6)}  # 400 .. 2400 bytes
    plan = [(k, "F32", tuple(v.shape)) for k, v in tensors.items()]
    w = ShardWriter(tmp_path, plan, max_bytes=3000)
    for k, v in tensors.items():
        w.write(k, v)
    w.finish(total_parameters=123)
    index = json.loads((tmp_path / INDEX).read_text())
    assert index["metadata"] == {"total_size": sum(v.nbytes for v in tensors.values()), "total_parameters": 123}
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    for s in shards:
        payload = (tmp_path / s).stat().st_size - 8 - struct.unpack("<Q", (tmp_path / s).read_bytes()[:8])[0]
        assert payload <= 3000 or len(SafetensorsFile(tmp_path / s).tensors) == 1
    ckpt = Checkpoint(tmp_path)
    for k, v in tensors.items():
        assert mx.array_equal(ckpt.array(k), v).item()


def test_shard_writer_refuses_what_was_not_planned(tmp_path):
    w = ShardWriter(tmp_path, [("a", "F32", (2,))], max_bytes=1 << 20)
    with pytest.raises(SafetensorsError, match="does not match the plan"):
        w.write("a", mx.zeros((3,)))
    with pytest.raises(SafetensorsError, match="before tensor 'a' was written"):
        w.finish()


GOOD = {"x": entry("F32", [2, 2], 0, 16)}

BAD_FILES = {
    "truncated below the length prefix": (b"\x10\x00\x00", None, b"", "truncated"),
    "header length beyond the file": (GOOD, 10_000, bytes(16), "header length 10000 runs past the end"),
    "header not JSON": (b"{not json", None, b"", "header is not JSON"),
    "header not UTF-8": (b"\xff\xfe{}", None, b"", "header is not JSON"),
    "header a JSON list": (b"[1, 2]", None, b"", "not a JSON object"),
    "unknown dtype": ({"x": entry("F4", [2], 0, 1)}, None, bytes(1), "tensor 'x' has unknown dtype 'F4'"),
    "offsets out of range": ({"x": entry("F32", [4], 0, 16)}, None, bytes(8), r"\[0, 16\] outside the 8 bytes"),
    "offsets reversed": ({"x": entry("U8", [0], 8, 4)}, None, bytes(8), "outside the 8 bytes"),
    "overlapping tensors": ({"x": entry("F32", [2], 0, 8), "y": entry("F32", [2], 4, 12)}, None, bytes(12),
                            "tensors 'x' and 'y' overlap"),
    "shape/byte mismatch": ({"x": entry("F32", [3], 0, 8)}, None, bytes(8), r"needs 12 bytes but .* span 8"),
    "negative shape": ({"x": entry("F32", [-2], 0, 8)}, None, bytes(8), "not a list of non-negative integers"),
    "boolean shape": ({"x": entry("F32", [True], 0, 4)}, None, bytes(4), "not a list of non-negative integers"),
    "entry missing offsets": ({"x": {"dtype": "F32", "shape": [1]}}, None, bytes(4), "needs dtype, shape"),
    "metadata not an object": ({"__metadata__": [1], **GOOD}, None, bytes(16), "__metadata__ is not a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_malformed_file_is_a_clear_error(tmp_path, case):
    header, length, data, message = BAD_FILES[case]
    if case.startswith("truncated"):
        (tmp_path / "m.safetensors").write_bytes(header)
    else:
        raw_file(tmp_path / "m.safetensors", header, data, length)
    with pytest.raises(SafetensorsError, match=message) as e:
        SafetensorsFile(tmp_path / "m.safetensors")
    assert "m.safetensors" in str(e.value) and isinstance(e.value, ModelError)


def test_truncated_real_file(tmp_path):
    save_file(tmp_path / "m.safetensors", {"a": mx.zeros((64, 64))})
    blob = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(blob[:-100])
    with pytest.raises(SafetensorsError, match="tensor 'a' has data_offsets .* truncated"):
        SafetensorsFile(tmp_path / "m.safetensors")


def write_shards(folder, layout: dict, index: dict = None):
    """layout {shard file: [tensor names]} (float32 scalars-of-1); index defaults to what the shards hold."""
    for shard, names in layout.items():
        save_file(folder / shard, {n: mx.zeros((1,)) for n in names})
    index = index if index is not None else {n: s for s, names in layout.items() for n in names}
    (folder / INDEX).write_text(json.dumps({"weight_map": index}))


def test_index_consistent_folder_reads(tmp_path):
    write_shards(tmp_path, {"model-1.safetensors": ["a", "b"], "model-2.safetensors": ["c"]})
    assert sorted(Checkpoint(tmp_path).where) == ["a", "b", "c"]


BAD_INDEXES = {
    "missing shard": ({"model-1.safetensors": ["a"]}, {"a": "model-1.safetensors", "b": "model-2.safetensors"},
                      "missing shard.*model-2.safetensors"),
    "tensor in two shards": ({"model-1.safetensors": ["a", "b"], "model-2.safetensors": ["b"]},
                             {"a": "model-1.safetensors", "b": "model-2.safetensors"},
                             "tensor 'b' is in two shards"),
    "index names the wrong shard": ({"model-1.safetensors": ["a"], "model-2.safetensors": ["b"]},
                                    {"a": "model-2.safetensors", "b": "model-2.safetensors"},
                                    "lists tensor 'a' in model-2.safetensors, which does not hold it"),
    "shard holds an unlisted tensor": ({"model-1.safetensors": ["a", "z"]}, {"a": "model-1.safetensors"},
                                       "holds tensor 'z', which .* does not list"),
    "shard outside the folder": ({"model-1.safetensors": ["a"]}, {"a": "../model-1.safetensors"},
                                 "not a shard file name in the folder"),
}


@pytest.mark.parametrize("case", sorted(BAD_INDEXES))
def test_inconsistent_index_is_a_clear_error(tmp_path, case):
    layout, index, message = BAD_INDEXES[case]
    write_shards(tmp_path, layout, index)
    with pytest.raises(SafetensorsError, match=message):
        Checkpoint(tmp_path)


def test_index_not_json_and_no_weights(tmp_path):
    (tmp_path / INDEX).write_text("{oops")
    with pytest.raises(ModelError, match="not valid JSON"):
        Checkpoint(tmp_path)
    (tmp_path / INDEX).unlink()
    with pytest.raises(SafetensorsError, match="no \\*.safetensors weights"):
        Checkpoint(tmp_path)


# ------------------------------------------------------------------------------------------------ fuzzing

names = st.text(min_size=0, max_size=6)
ints = st.one_of(st.integers(-3, 40), st.integers(), st.booleans(), st.floats(allow_nan=True), st.none(),
                 st.text(max_size=3))
entries = st.one_of(
    st.fixed_dictionaries({"dtype": st.one_of(st.sampled_from(sorted(DTYPES)), st.text(max_size=4)),
                           "shape": st.one_of(st.lists(ints, max_size=3), ints),
                           "data_offsets": st.one_of(st.lists(ints, max_size=3), ints)}),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=4)),
                 lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(names, c, max_size=3)), max_leaves=6),
)
headers = st.dictionaries(names, entries, max_size=5)


def check_parse(blob: bytes):
    try:
        tensors, _ = parse_bytes(blob)
    except SafetensorsError:
        return
    n = struct.unpack("<Q", blob[:8])[0]
    data = len(blob) - 8 - n
    spans = sorted((t.begin, t.end) for t in tensors.values())
    for t in tensors.values():  # whatever is accepted is valid
        assert 0 <= t.begin <= t.end <= data and t.nbytes == int(np.prod(t.shape)) * DTYPES[t.dtype][0]
    assert all(b1 >= e0 for (b0, e0), (b1, e1) in zip(spans, spans[1:]) if e0 > b0 and e1 > b1)


FUZZ = settings(max_examples=300, deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=64))
def test_fuzz_random_bytes(blob):
    check_parse(blob)


@FUZZ
@given(st.integers(0, 2**64 - 1), st.binary(max_size=48), st.binary(max_size=48))
def test_fuzz_any_length_prefix(n, header, data):
    check_parse(struct.pack("<Q", n) + header + data)


@FUZZ
@given(headers, st.integers(0, 64), st.booleans())
def test_fuzz_structured_headers(header, data_len, nested):
    hb = json.dumps({"__metadata__": {"k": "v"}, **header} if nested else header).encode()
    check_parse(struct.pack("<Q", len(hb)) + hb + bytes(data_len))


def test_fuzz_deep_nesting_is_our_error():
    hb = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(SafetensorsError, match="not JSON"):
        parse_bytes(struct.pack("<Q", len(hb)) + hb)
