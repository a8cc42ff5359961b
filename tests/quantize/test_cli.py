"""`mlxm convert` as a user meets it: every bad input is one line `mlxm: error: ...`, a non-zero exit and no OUT
(nor a temporary folder); an interrupt leaves nothing; --force replaces only a finished folder; the disk space
check comes before any work; Hub ids go through huggingface_hub (a local fake here, never the network). Real
signals, kills, a full disk, rival runs and numeric flags: tests/hostile/test_convert.py."""

import fnmatch
import json
import os
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest

import mlxmodels
from app.cli import main
from quantize import convert as convert_module
from mlxmodels.formats.safetensors import INDEX, SafetensorsFile, ShardWriter, save_file
from tests.oracle import build_tiny_llama, edit_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def src(tiny, tmp_path):
    dst = tmp_path / "src"
    shutil.copytree(tiny, dst)
    return dst


def run_cli(capsys, *args):
    """-> (exit code, stdout, stderr lines)."""
    try:
        code = main(["convert", *map(str, args)])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def assert_one_line_error(capsys, args, match, out):
    code, _, err = run_cli(capsys, *args)
    assert code != 0
    assert len(err) == 1 and err[0].startswith("mlxm: error: "), err
    assert match in err[0], err[0]
    assert_nothing_left(out)


def assert_nothing_left(out: Path):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "temporary folder left"


# ------------------------------------------------------------------------------------------ damaged weights


def header_of(path: Path):
    blob = path.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def rewrite(path: Path, header, data, length=None):
    hb = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(hb) if length is None else length) + hb + data)


def first(header):
    return sorted(k for k in header if k != "__metadata__")[0]


def truncate(p):
    p.write_bytes(p.read_bytes()[:-1000])


def long_header(p):
    h, d = header_of(p)
    rewrite(p, h, d, length=10**9)


def not_json(p):
    p.write_bytes(struct.pack("<Q", 9) + b"{not json" + header_of(p)[1])


def unknown_dtype(p):
    h, d = header_of(p)
    h[first(h)]["dtype"] = "F6_E3M2"
    rewrite(p, h, d)


def overlap(p):
    h, d = header_of(p)
    names = sorted(k for k in h if k != "__metadata__" and h[k]["data_offsets"][1] - h[k]["data_offsets"][0] >= 8)
    a, b = h[names[0]], h[names[1]]
    size = b["data_offsets"][1] - b["data_offsets"][0]
    if size <= a["data_offsets"][1] - a["data_offsets"][0]:  # b moved onto a, same size
        b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + size]
    else:
        a["data_offsets"] = [b["data_offsets"][0], b["data_offsets"][0] + a["data_offsets"][1] - a["data_offsets"][0]]
    rewrite(p, h, d)


def out_of_range(p):
    h, d = header_of(p)
    k = first(h)
    size = h[k]["data_offsets"][1] - h[k]["data_offsets"][0]
    h[k]["data_offsets"] = [len(d) - size // 2, len(d) - size // 2 + size]
    rewrite(p, h, d)


def shape_mismatch(p):
    h, d = header_of(p)
    h[first(h)]["shape"][0] += 1
    rewrite(p, h, d)


DAMAGE = {
    "truncated file": (truncate, "truncated or damaged"),
    "header length beyond the file": (long_header, "header length 1000000000 runs past the end of the file"),
    "header not JSON": (not_json, "header is not JSON"),
    "unknown dtype": (unknown_dtype, "unknown dtype 'F6_E3M2'"),
    "overlapping offsets": (overlap, "overlap"),
    "out-of-range offsets": (out_of_range, "outside the"),
    "shape/byte mismatch": (shape_mismatch, "needs"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_weights(capsys, src, tmp_path, case):
    damage, match = DAMAGE[case]
    damage(src / "model.safetensors")
    assert_one_line_error(capsys, [src, tmp_path / "out"], match, tmp_path / "out")


def split_in_two(folder: Path):
    """model.safetensors -> two shards and an index."""
    w = mx.load(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(w)
    half = {f"model-0000{i + 1}-of-00002.safetensors": names[i::2] for i in range(2)}
    for f, ns in half.items():
        save_file(folder / f, {n: w[n] for n in ns})
    return {n: f for f, ns in half.items() for n in ns}


def test_missing_shard(capsys, src, tmp_path):
    index = split_in_two(src)
    (src / INDEX).write_text(json.dumps({"weight_map": index}))
    (src / "model-00002-of-00002.safetensors").unlink()
    assert_one_line_error(capsys, [src, tmp_path / "out"], "missing shard(s) model-00002-of-00002.safetensors",
                          tmp_path / "out")


def test_tensor_in_two_shards(capsys, src, tmp_path):
    index = split_in_two(src)
    (src / INDEX).write_text(json.dumps({"weight_map": index}))
    w = dict(mx.load(str(src / "model-00002-of-00002.safetensors")))
    w["model.norm.weight"] = mx.ones((64,))
    save_file(src / "model-00002-of-00002.safetensors", w)
    assert_one_line_error(capsys, [src, tmp_path / "out"], "is in two shards", tmp_path / "out")


def test_missing_config(capsys, src, tmp_path):
    (src / "config.json").unlink()
    assert_one_line_error(capsys, [src, tmp_path / "out"], "has no config.json", tmp_path / "out")


def test_unknown_model_type(capsys, src, tmp_path):
    edit_config(src, lambda c: c.update(model_type="transformer9000"))
    assert_one_line_error(capsys, [src, tmp_path / "out"], "unsupported model_type 'transformer9000'; supported:",
                          tmp_path / "out")


def test_weights_that_do_not_fit_the_config(capsys, src, tmp_path):
    edit_config(src, lambda c: c.update(intermediate_size=96))
    assert_one_line_error(capsys, [src, tmp_path / "out"], "model.layers.0.mlp.down_proj.weight has shape (64, 128)",
                          tmp_path / "out")
    edit_config(src, lambda c: c.update(intermediate_size=128, num_hidden_layers=3))
    assert_one_line_error(capsys, [src, tmp_path / "out"], "missing 9 tensor(s), e.g. model.layers.2.",
                          tmp_path / "out")


def test_already_quantized_source(capsys, src, tmp_path):
    assert run_cli(capsys, src, tmp_path / "q", "-q")[0] == 0
    assert_one_line_error(capsys, [tmp_path / "q", tmp_path / "out"], "is already quantized (MLX affine 4-bit)",
                          tmp_path / "out")


@pytest.mark.parametrize("args,match", [
    (["--bits", "7"], "argument --bits: invalid choice: 7"),
    (["--group-size", "16"], "argument --group-size: invalid choice: 16"),
    (["--mode", "nf4"], "argument --mode: invalid choice: 'nf4'"),
    (["--recipe", "best"], "argument --recipe: invalid choice: 'best'"),
    (["--mode", "mxfp4", "--bits", "8"], "mxfp4 means 4 bits with group size 32"),
    (["--recipe", "edges_4_6", "--mode", "mxfp8"], "recipes mix affine bit widths"),
    (["--dtype", "float64"], "argument --dtype: invalid choice"),
    (["--report", "/nonexistent/text.txt"], "--report: cannot read /nonexistent/text.txt"),
])
def test_bad_options(capsys, tiny, tmp_path, args, match):
    assert_one_line_error(capsys, [tiny, tmp_path / "out", *args], match, tmp_path / "out")


def test_missing_arguments_and_bad_source(capsys, tmp_path):
    code, _, err = run_cli(capsys)
    assert code == 2 and err == ["mlxm: error: the following arguments are required: SRC, OUT"]
    assert_one_line_error(capsys, [tmp_path / "nowhere" / "x", tmp_path / "out"],
                          "is not a model folder or a Hugging Face Hub id", tmp_path / "out")


# ------------------------------------------------------------------------------------------ atomic output


def logits(folder):
    return np.array(mlxmodels.load(folder)[0](mx.array([[1, 2, 3, 4]])))


def test_existing_out_is_refused_then_replaced_with_force(capsys, tiny, tmp_path):
    out = tmp_path / "out"
    assert run_cli(capsys, tiny, out)[0] == 0
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, tiny, out)
    assert code == 1 and err == [f"mlxm: error: {out} already exists; pass --force to replace it"]
    assert (out / "keep.txt").read_text() == "mine"
    code, _, err = run_cli(capsys, tiny, out, "--force", "-q")  # --force never removes what convert did not write
    assert code == 1 and len(err) == 1 and f"{out} holds keep.txt, which convert does not write" in err[0]
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    code, stdout, _ = run_cli(capsys, tiny, out, "--force", "-q")
    assert code == 0 and "4-bit, group 64" in stdout
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 4
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # like a mkdir, not mkdtemp's 0700
    assert_no_temp(tmp_path)


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def assert_no_temp(parent):
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_refuses_to_overwrite_its_source(capsys, src):
    code, _, err = run_cli(capsys, src, src, "--force")
    assert code == 1 and "is (or holds) the source folder" in err[0] and (src / "model.safetensors").is_file()


@pytest.mark.parametrize("existing", [False, True])
def test_interrupt_leaves_nothing_half_done(capsys, tiny, tmp_path, monkeypatch, existing):
    out = tmp_path / "out"
    if existing:
        run_cli(capsys, tiny, out)
        before = logits(out)
    calls = []
    real = ShardWriter.write

    def write(self, name, a):
        calls.append(name)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(self, name, a)

    monkeypatch.setattr(ShardWriter, "write", write)
    code, _, _ = run_cli(capsys, tiny, out, "-q", "--force")
    assert code == 130 and len(calls) == 5
    if existing:  # --force replaces only once the new folder is complete
        np.testing.assert_array_equal(logits(out), before)
        assert "quantization" not in json.loads((out / "config.json").read_text())
        assert_no_temp(tmp_path)
    else:
        assert_nothing_left(out)


def test_error_midway_leaves_nothing(capsys, tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(ShardWriter, "finish", lambda self, **k: (_ for _ in ()).throw(OSError("disk on fire")))
    code, _, err = run_cli(capsys, tiny, tmp_path / "out")
    assert code == 1 and err == ["mlxm: error: disk on fire"]  # progress goes to stdout: stderr holds the error alone
    assert_nothing_left(tmp_path / "out")


def test_not_enough_disk_space_before_any_work(capsys, tiny, tmp_path, monkeypatch):
    read = []
    monkeypatch.setattr(SafetensorsFile, "array", lambda self, name: read.append(name))
    monkeypatch.setattr(convert_module.shutil, "disk_usage", lambda p: SimpleNamespace(free=10_000, total=1, used=1))
    assert_one_line_error(capsys, [tiny, tmp_path / "out"], "not enough disk space", tmp_path / "out")
    assert read == []  # nothing was read, let alone written


# ------------------------------------------------------------------------------------------ the Hub


class FakeHub:
    """snapshot_download over a local 'remote' folder: copies what allow_patterns admit into a snapshot folder."""

    def __init__(self, remote: Path, cache: Path):
        self.remote, self.cache, self.calls = remote, cache, []

    def __call__(self, repo_id, allow_patterns=None, dry_run=False, **kw):
        self.calls.append((repo_id, list(allow_patterns or []), dry_run))
        if repo_id != "someorg/tiny":
            from huggingface_hub.errors import RepositoryNotFoundError

            raise RepositoryNotFoundError(f"404 Client Error: Repository Not Found for url: .../{repo_id}",
                                          response=SimpleNamespace(status_code=404, headers={}, request=None))
        files = [p for p in sorted(self.remote.iterdir())
                 if any(fnmatch.fnmatch(p.name, pat) for pat in allow_patterns or ["*"])]
        snap = self.cache / "snapshot"
        if dry_run:
            return [SimpleNamespace(filename=p.name, file_size=p.stat().st_size,
                                    will_download=not (snap / p.name).exists()) for p in files]
        snap.mkdir(parents=True, exist_ok=True)
        for p in files:
            shutil.copyfile(p, snap / p.name)
        return str(snap)


def test_hub_id_fetches_only_what_conversion_needs(capsys, tiny, tmp_path, monkeypatch):
    import huggingface_hub

    remote = tmp_path / "remote"
    shutil.copytree(tiny, remote)
    index = split_in_two(remote)
    (remote / INDEX).write_text(json.dumps({"weight_map": index}))
    for junk in ("pytorch_model.bin", "modeling_evil.py", "consolidated.safetensors", "README.md"):
        (remote / junk).write_bytes(b"x")
    hub = FakeHub(remote, tmp_path / "cache")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    code, stdout, err = run_cli(capsys, "someorg/tiny", tmp_path / "out", "-q")
    assert code == 0, err
    fetched = sorted(p.name for p in (tmp_path / "cache" / "snapshot").iterdir())
    assert fetched == sorted(["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                              INDEX, *set(index.values())])
    assert [c[2] for c in hub.calls] == [False, True, False]  # metadata, size check, weights
    np.testing.assert_array_equal(logits(tmp_path / "out"), logits(_convert_local(tiny, tmp_path)))


def _convert_local(tiny, tmp_path):
    from quantize.convert import Options, convert

    convert(tiny, tmp_path / "local", Options(quantize=True))
    return tmp_path / "local"


def test_hub_errors_are_one_line(capsys, tiny, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeHub(tiny, tmp_path / "cache"))
    assert_one_line_error(capsys, ["someorg/absent", tmp_path / "out"], "could not fetch someorg/absent",
                          tmp_path / "out")


def test_hub_download_space_is_checked_first(capsys, tiny, tmp_path, monkeypatch):
    import huggingface_hub

    hub = FakeHub(tiny, tmp_path / "cache")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    monkeypatch.setattr(convert_module.shutil, "disk_usage", lambda p: SimpleNamespace(free=10_000, total=1, used=1))
    assert_one_line_error(capsys, ["someorg/tiny", tmp_path / "out"], "not enough disk space for downloading",
                          tmp_path / "out")
    assert [c[2] for c in hub.calls] == [False, True]  # no weights download was started


def test_hub_id_offline_from_the_cache(capsys, tiny, tmp_path, monkeypatch):
    """The real huggingface_hub, offline, over a fake HF cache."""
    cache = tmp_path / "hub"
    snap = cache / "models--someorg--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny, snap)
    (cache / "models--someorg--tiny" / "refs").mkdir()
    (cache / "models--someorg--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    code, _, err = run_cli(capsys, "someorg/tiny", tmp_path / "out")
    assert code == 0, err
    np.testing.assert_array_equal(logits(tmp_path / "out"), logits(tiny))
    assert_one_line_error(capsys, ["someorg/absent", tmp_path / "out2"], "not in the Hugging Face cache",
                          tmp_path / "out2")
