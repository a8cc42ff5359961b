"""Crafted and damaged GGUF files: every one is refused by `mlxmodels.load` (and `mlxm generate -m`) with one line
naming the file and what is wrong, quickly, without allocating what the file announces (a length of 2^62, a count
of 2^40) and without a traceback; a fuzzed header never escapes as anything but that error."""

from __future__ import annotations

import struct
import time
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlxmodels
from mlxmodels.errors import ModelError
from mlxmodels.formats.gguf import GGUFFile
from tests.hostile.cli import assert_refused, mlxm

F32, Q4_0, IQ2_XS = 0, 2, 17  # IQ2_XS: a type mlxmodels does not read (256 weights in 74 bytes)


def text(b) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return text(key) + struct.pack("<I", vtype) + payload


def u32(key: str, v: int) -> bytes:
    return kv(key, 4, struct.pack("<I", v))


def string(key: str, v: str) -> bytes:
    return kv(key, 8, text(v))


def tensor(name: str, dims, ggml_type: int = F32, offset: int = 0) -> bytes:
    return (text(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
            + struct.pack("<IQ", ggml_type, offset))


def gguf_bytes(kvs=(), tensors=(), data=b"", version=3, n_tensors=None, n_kv=None, alignment=32) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(tensors)
    return head + b"\0" * (-len(head) % alignment) + data


LLAMA = [string("general.architecture", "llama")]
NORM = tensor("output_norm.weight", [64])  # 256 bytes of F32 at offset 0
VALID = gguf_bytes(LLAMA, [NORM], b"\0" * 256)


def assert_gguf_refused(tmp_path, blob: bytes, *needles: str, name: str = "model.gguf") -> str:
    path = tmp_path / name
    path.write_bytes(blob)
    tic = time.monotonic()
    with pytest.raises(ModelError) as e:
        mlxmodels.load(path)
    line = str(e.value)
    assert time.monotonic() - tic < 10
    assert "\n" not in line and str(path) in line, line
    for needle in needles:
        assert needle in line, line
    return line


CASES = {
    "not gguf": (b"PK\x03\x04 a zip file", "not a GGUF file"),
    "empty": (b"", "not a GGUF file"),
    "truncated header": (VALID[:10], "runs past the end of the file"),
    "version 1": (gguf_bytes(LLAMA, version=1), "version 1 is not supported"),
    "tensor count 2^40": (gguf_bytes(LLAMA, n_tensors=1 << 40), "tensor count", "over the limit"),
    "metadata count past the file": (gguf_bytes(LLAMA, n_kv=1000), "metadata count", "more than the rest"),
    "string length 2^62": (gguf_bytes([kv("general.architecture", 8, struct.pack("<Q", 1 << 62))]),
                           "'general.architecture'", "runs past the end"),
    "key length 2^62": (gguf_bytes([struct.pack("<Q", 1 << 62) + b"\0" * 16]), "metadata key #0", "over the limit"),
    "array count 2^40": (gguf_bytes([kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 1 << 40))]),
                         "'tokenizer.ggml.tokens'", "over the limit"),
    "numeric array past the file": (gguf_bytes([kv("x", 9, struct.pack("<IQ", 4, 1 << 20))]),
                                    "more than the rest of the file"),
    "unknown value type": (gguf_bytes([kv("general.architecture", 99, b"")]), "unknown value type 99"),
    "arrays nested deep": (gguf_bytes([kv("x", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 9, 1)
                                          + struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 4, 0))]), "nests arrays"),
    "duplicate key": (gguf_bytes(LLAMA * 2, [NORM], b"\0" * 256), "appears twice"),
    "bad utf-8 key": (gguf_bytes([text(b"\xff\xfe") + struct.pack("<I", 4) + b"\0" * 4]), "not UTF-8"),
    "alignment 0": (gguf_bytes(LLAMA + [u32("general.alignment", 0)]), "general.alignment"),
    "alignment 48": (gguf_bytes(LLAMA + [u32("general.alignment", 48)]), "not a power of two"),
    "five dims": (gguf_bytes(LLAMA, [tensor("output_norm.weight", [1] * 5)]), "5 dimensions"),
    "zero dims": (gguf_bytes(LLAMA, [tensor("output_norm.weight", [])]), "0 dimensions"),
    "unknown ggml type": (gguf_bytes(LLAMA, [tensor("output_norm.weight", [64], 999)], b"\0" * 256),
                          "'output_norm.weight'", "unknown ggml type 999"),
    "offset past the data": (gguf_bytes(LLAMA, [tensor("output_norm.weight", [64], F32, 1 << 40)], b"\0" * 256),
                             "runs past the end", "truncated"),
    "truncated data": (gguf_bytes(LLAMA, [NORM], b"\0" * 100), "runs past the end"),
    "misaligned offset": (gguf_bytes(LLAMA, [tensor("output_norm.weight", [8], F32, 4)], b"\0" * 256),
                          "not a multiple of the alignment 32"),
    "overlap": (gguf_bytes(LLAMA, [NORM, tensor("token_embd.weight", [64, 2], F32, 128)], b"\0" * 1024),
                "overlap"),
    "duplicate tensor": (gguf_bytes(LLAMA, [NORM, tensor("output_norm.weight", [64], F32, 256)], b"\0" * 512),
                         "appears twice"),
    "partial block": (gguf_bytes(LLAMA, [tensor("output.weight", [48, 2], Q4_0)], b"\0" * 256),
                      "not whole Q4_0 blocks"),
    "dimension over int32": (gguf_bytes(LLAMA, [tensor("output_norm.weight", [1 << 31])]), "MLX cannot hold"),
    "no architecture": (gguf_bytes([], [NORM], b"\0" * 256), "no 'general.architecture'"),
    "unknown architecture": (gguf_bytes([string("general.architecture", "rwkv9")]), "'rwkv9' is not supported"),
    "architecture not a string": (gguf_bytes([u32("general.architecture", 7)]), "is int, not str"),
    "split file": (gguf_bytes(LLAMA + [kv("split.count", 2, struct.pack("<H", 3))]), "llama-gguf-split --merge"),
    "unknown tensor name": (gguf_bytes(LLAMA, [tensor("blk.0.attn_qkv.weight", [64])], b"\0" * 256),
                            "'blk.0.attn_qkv.weight' is not one mlxmodels knows"),
    "i-quant": (gguf_bytes(LLAMA, [tensor("token_embd.weight", [256, 1], IQ2_XS)], b"\0" * 160),
                "is IQ2_XS", "does not read from GGUF yet"),
    "block count a string": (gguf_bytes(LLAMA + [string("llama.block_count", "30")], [NORM], b"\0" * 256),
                             "'llama.block_count' is str, not int"),
    "zero heads": (gguf_bytes(LLAMA + [u32("llama.block_count", 1), u32("llama.attention.head_count", 0)],
                              [NORM], b"\0" * 256), "num_attention_heads"),
    "rope factors without a head dim": (gguf_bytes(LLAMA, [NORM, tensor("rope_freqs.weight", [8], F32, 256)],
                                                   b"\0" * 512), "'rope_freqs.weight' needs the head dim"),
    "rope factors of zero": (gguf_bytes(LLAMA + [u32("llama.rope.dimension_count", 16)],
                                        [NORM, tensor("rope_freqs.weight", [8], F32, 256)], b"\0" * 512),
                             "not positive numbers"),
}


@pytest.mark.parametrize("case", CASES)
def test_crafted_file_is_refused(tmp_path, case):
    blob, *needles = CASES[case]
    assert_gguf_refused(tmp_path, blob, *needles)


def test_token_id_outside_the_vocabulary(tmp_path):
    kvs = LLAMA + [string("tokenizer.ggml.model", "gpt2"),
                   kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 2) + text("a") + text("b")),
                   u32("tokenizer.ggml.eos_token_id", 7)]
    assert_gguf_refused(tmp_path, gguf_bytes(kvs, [NORM], b"\0" * 256), "'tokenizer.ggml.eos_token_id' is 7, outside the 2")


def test_cli_refuses_in_one_line(tmp_path):
    path = tmp_path / "evil.gguf"
    path.write_bytes(gguf_bytes(LLAMA, [tensor("token_embd.weight", [256, 1], IQ2_XS)], b"\0" * 160))
    assert_refused(mlxm(["generate", "-m", path, "-p", "hi", "--max-tokens", "2"]), "evil.gguf", "IQ2_XS")


def test_fifo_named_gguf_never_blocks(tmp_path):
    import os

    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    assert_refused(mlxm(["generate", "-m", fifo, "-p", "hi"]), "model.gguf", within=20)


@settings(max_examples=150, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, len(VALID)))
def test_fuzzed_header_is_a_clean_error(tmp_path, flips, cut):
    blob = bytearray(VALID)
    for at, value in flips:
        blob[at] = value
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(bytes(blob[:cut] if cut < len(VALID) // 2 else blob))
    try:
        GGUFFile(path).close()
    except ModelError as e:
        assert "\n" not in str(e)
