"""The CPU dtype policy and the OpenBLAS switch: same logits with and without it."""

import json
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

from mlxmodels import blas
from mlxmodels.load import compute_dtype
from tests.oracle import build_hf

BF16 = {"w": mx.zeros((2, 2), mx.bfloat16), "n": mx.zeros((2,), mx.bfloat16)}


def test_cpu_policy(monkeypatch):
    monkeypatch.setattr(blas, "FAST_BLAS", False)
    assert compute_dtype(None, BF16) == mx.bfloat16  # reference BLAS: keep the 16-bit kernels
    assert compute_dtype(None, BF16, quantized=True) == mx.float32  # quantized_matmul wants float32
    monkeypatch.setattr(blas, "FAST_BLAS", True)
    assert compute_dtype(None, BF16) == mx.float32
    assert compute_dtype("float16", BF16) == mx.float16  # a request wins


RUN = """
import mlxmodels  # first, so that OpenBLAS is loaded before mlx.core
import json, sys, numpy as np, mlx.core as mx
from mlxmodels import blas
m, _ = mlxmodels.load(sys.argv[1], dtype="float32")
print(json.dumps({"fast": blas.FAST_BLAS, "logits": np.array(m(mx.array([list(range(40))]))).tolist()}))
"""


@pytest.mark.skipif(not any(__import__("glob").glob(p) for p in blas.CANDIDATES), reason="OpenBLAS not installed")
def test_openblas_gives_the_same_logits(tmp_path):
    build_hf("llama", tmp_path, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=300, pad_token_id=0)
    runs = {}
    for flag in ("1", "0"):
        out = subprocess.run([sys.executable, "-c", RUN, str(tmp_path)], capture_output=True, text=True, check=True,
                             env={**__import__("os").environ, "MLXMODELS_OPENBLAS": flag})
        runs[flag] = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs["1"]["fast"] is True and runs["0"]["fast"] is False
    np.testing.assert_allclose(runs["1"]["logits"], runs["0"]["logits"], atol=1e-4, rtol=0)
