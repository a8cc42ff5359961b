"""A hostile or damaged Ollama store: `-m ollama:NAME` refuses each case in one line, quickly, without a traceback,
reading nothing outside the store and never blocking on a FIFO: traversal in the name or the digest, a huge or
malformed manifest, no model layer, a FIFO blob, symlinks out of the store, a blob cut short."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from mlxmodels.formats import ollama
from mlxmodels.formats.ollama import OllamaError
from mlxmodels.load import resolve
from tests.hostile.cli import assert_refused, mlxm

BLOB = b"GGUF" + bytes(60)  # never parsed here: every case is refused before the blob is opened
DIGEST = hashlib.sha256(BLOB).hexdigest()


def manifest(layers) -> str:
    return json.dumps({"schemaVersion": 2, "layers": layers})


def layer(digest=f"sha256:{DIGEST}", size=len(BLOB), media=ollama.MODEL_LAYER) -> dict:
    return {"mediaType": media, "digest": digest, "size": size}


@pytest.fixture
def store(tmp_path, monkeypatch):
    root = tmp_path / "models"
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / f"sha256-{DIGEST}").write_bytes(BLOB)
    (root / "manifests" / ollama.HOST / ollama.NAMESPACE / "m").mkdir(parents=True)
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    return root


def put(store, text, tag="latest"):
    (store / "manifests" / ollama.HOST / ollama.NAMESPACE / "m" / tag).write_text(text)


def assert_store_refused(*needles):
    with pytest.raises(OllamaError) as e:
        resolve("ollama:m")
    line = str(e.value)
    assert "\n" not in line
    for needle in needles:
        assert needle in line, line
    return line


def test_the_fake_store_works(store):
    put(store, manifest([layer()]))
    assert resolve("ollama:m") == (store / "blobs" / f"sha256-{DIGEST}").resolve()


@pytest.mark.parametrize("ref", ["ollama:../../../etc/passwd", "ollama:m:../../x", "ollama:..", "ollama:a/../m",
                                 "ollama:/abs", "ollama:m:", "ollama:", "ollama:a/b/c/d", "ollama:m\x00x",
                                 "ollama:.hidden", "ollama:m:" + "t" * 200])
def test_name_traversal(store, ref):
    with pytest.raises(OllamaError, match="not an Ollama model name"):
        resolve(ref)


@pytest.mark.parametrize("digest", [f"sha256:../../../{DIGEST[:10]}", "sha256:" + "A" * 64, f"sha512:{DIGEST}",
                                    DIGEST, f"sha256:{DIGEST}/../x", 7, None])
def test_digest_traversal_or_format(store, digest):
    put(store, manifest([layer(digest=digest)]))
    assert_store_refused("digest", "not sha256: and 64 hex digits")


def test_huge_manifest(store):
    put(store, manifest([layer()]) + " " * (ollama.MAX_MANIFEST + 1))
    assert_store_refused("larger than")


@pytest.mark.parametrize("text, needle", [("{not json", "not valid JSON"), ("[1, 2]", "no list of layers"),
                                          ('{"layers": {}}', "no list of layers"),
                                          ('{"layers": [1]}', "no list of layers"),
                                          ('{"layers": [{"size": NaN}]}', "not valid JSON"),
                                          ("[" * 100_000, "nests deeper"), (b"\xff\xfe", "not UTF-8")])
def test_malformed_manifest(store, text, needle):
    if isinstance(text, bytes):
        (store / "manifests" / ollama.HOST / ollama.NAMESPACE / "m" / "latest").write_bytes(text)
    else:
        put(store, text)
    assert_store_refused(needle)


def test_no_model_layer(store):
    put(store, manifest([layer(media="application/vnd.ollama.image.adapter")]))
    assert_store_refused("0 model layers", "not a model")


def test_two_model_layers(store):
    put(store, manifest([layer(), layer()]))
    assert_store_refused("2 model layers")


def test_blob_missing(store):
    put(store, manifest([layer(digest="sha256:" + "1" * 64)]))
    assert_store_refused("not in", "interrupted", "ollama pull m")


def test_blob_cut_short(store):
    put(store, manifest([layer(size=len(BLOB) + 1)]))
    assert_store_refused("manifest says", "ollama pull m")


def test_fifo_blob_never_blocks(store):
    fifo_digest = "f" * 64
    os.mkfifo(store / "blobs" / f"sha256-{fifo_digest}")
    put(store, manifest([layer(digest=f"sha256:{fifo_digest}")]))
    assert_store_refused("FIFO")
    assert_refused(mlxm(["generate", "-m", "ollama:m", "-p", "hi"], env={"OLLAMA_MODELS": str(store)}), "FIFO",
                   within=20)


def test_fifo_manifest_never_blocks(store):
    os.mkfifo(store / "manifests" / ollama.HOST / ollama.NAMESPACE / "m" / "latest")
    assert_store_refused("FIFO")


def test_blob_symlink_out_of_store(store, tmp_path):
    secret = tmp_path / "secret.gguf"
    secret.write_bytes(BLOB)
    blob = store / "blobs" / f"sha256-{DIGEST}"
    blob.unlink()
    blob.symlink_to(secret)
    put(store, manifest([layer()]))
    assert_store_refused("outside the store")


def test_manifest_symlink_out_of_store(store, tmp_path):
    outside = tmp_path / "planted"
    outside.write_text(manifest([layer()]))
    (store / "manifests" / ollama.HOST / ollama.NAMESPACE / "m" / "latest").symlink_to(outside)
    assert_store_refused("outside the store")


def test_manifest_folder_symlink_out_of_store(store, tmp_path):
    """A name's folder linked elsewhere (manifests/.../library -> /tmp/x) is outside the store too."""
    elsewhere = tmp_path / "elsewhere" / "m"
    elsewhere.mkdir(parents=True)
    (elsewhere / "latest").write_text(manifest([layer()]))
    (store / "manifests" / ollama.HOST / "evil").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OllamaError, match="outside the store"):
        resolve("ollama:evil/m")


def test_store_itself_may_be_a_symlink(store, tmp_path, monkeypatch):
    """Users move ~/.ollama/models to another disk and link it: the store is where the link points."""
    put(store, manifest([layer()]))
    link = tmp_path / "link"
    link.symlink_to(store)
    monkeypatch.setenv("OLLAMA_MODELS", str(link))
    assert resolve("ollama:m") == (store / "blobs" / f"sha256-{DIGEST}").resolve()


def test_cli_one_line(store):
    put(store, "{not json")
    assert_refused(mlxm(["info", "-m", "ollama:m"], env={"OLLAMA_MODELS": str(store)}), "manifest", "ollama pull m")
