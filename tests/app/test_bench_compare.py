"""`mlxm bench --compare mlx-lm` when mlx-lm cannot read the folder as it is: the built-in default model (its MTP
layers) runs through a temporary view without them, and a peer that still cannot load leaves our results printed
with one line saying why."""

import contextlib
import json
import tempfile

import mlx.core as mx
import pytest

from app import bench_view, cli
from mlxmodels.formats.safetensors import INDEX, save_file


def run(capsys, *args):
    code = cli.main(["bench", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


@pytest.fixture
def own_tmp(tmp_path, monkeypatch):
    """Temporary files of the run go under tmp_path, so a test can see that none is left."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_the_default_model_gives_both_rows(capsys, own_tmp):
    # float32: MLX's CPU backend has no bfloat16 gather_mm, which mlx-lm's MoE layers need (a Mac's GPU has)
    code, out, err = run(capsys, "-p", 16, "-g", 4, "-n", 1, "--compare", "mlx-lm", "--dtype", "float32", "--json")
    assert code == 0
    r = json.loads(out)
    assert set(r["tools"]) == {"ours", "mlx-lm"} and "ratios" in r and "peer_failed" not in r
    assert r["peer_view"] == 44  # the MTP layer's tensors (model.layers.4.*), left out of mlx-lm's view
    assert len(err) == 1 and err[0].startswith("mlxm: note: mlx-lm ran on a view of the folder without its 44"), err
    assert list(own_tmp.iterdir()) == []  # the view and the logs are gone


def test_a_peer_that_cannot_load_leaves_our_table(capsys, tiny_folder, own_tmp, monkeypatch):
    broken = own_tmp / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_folder / "config.json").read_text())  # and no weights at all

    @contextlib.contextmanager
    def no_weights(folder, layers):
        yield broken, 0

    monkeypatch.setattr(bench_view, "peer_view", no_weights)
    code, out, err = run(capsys, "-m", tiny_folder, "-p", 16, "-g", 4, "-n", 1, "--compare", "mlx-lm")
    assert code == 0
    assert "| mlxmodels |" in out and "| mlx-lm |" not in out and "mlxmodels / mlx-lm" not in out, out
    assert len(err) == 1, err
    assert err[0].startswith("mlxm: note: --compare mlx-lm left out: the mlx-lm worker exited with status 1: "), err
    assert "Error: " in err[0] and "its log: " in err[0], err  # the exception's line, not the traceback's tail
    log = err[0].split("its log: ")[1].split(")")[0]
    assert "Traceback" in open(log).read()  # kept, as the note promises


def test_the_view_rewrites_only_the_shard_with_extra_layers(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    a = {"model.layers.0.w": mx.arange(6, dtype=mx.float32).reshape(2, 3), "model.embed.weight": mx.ones((4,))}
    b = {"model.layers.1.w": mx.full((3,), 2, dtype=mx.bfloat16), "model.layers.2.w": mx.zeros((5,)),
         "model.layers.2.v": mx.ones((2,), dtype=mx.int32)}
    save_file(src / "model-00001-of-00002.safetensors", a)
    save_file(src / "model-00002-of-00002.safetensors", b, metadata={"format": "pt"})
    weight_map = {**{k: "model-00001-of-00002.safetensors" for k in a},
                  **{k: "model-00002-of-00002.safetensors" for k in b}}
    (src / INDEX).write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    (src / "config.json").write_text("{}")

    with bench_view.peer_view(src, 2) as (view, left_out):
        assert left_out == 2
        assert (view / "model-00001-of-00002.safetensors").is_symlink()  # untouched shard: linked, not copied
        assert not (view / "model-00002-of-00002.safetensors").is_symlink()
        assert not (view / "config.json").is_symlink()
        got, metadata = {}, {}
        for shard in sorted(view.glob("*.safetensors")):  # as mlx-lm reads them (ours takes no links out)
            tensors, metadata[shard.name] = mx.load(str(shard), return_metadata=True)
            got.update(tensors)
        want = {**a, "model.layers.1.w": b["model.layers.1.w"]}
        assert sorted(got) == sorted(want)
        assert all(got[k].dtype == v.dtype and mx.array_equal(got[k], v) for k, v in want.items())
        assert metadata["model-00002-of-00002.safetensors"] == {"format": "pt"}
        index = json.loads((view / INDEX).read_text())
        assert index["weight_map"] == {k: v for k, v in weight_map.items() if k in want}
        assert "metadata" not in index  # its total_size counted what was left out
    assert not view.exists()

    with bench_view.peer_view(src, 3) as (view, left_out):  # nothing past the last layer: the folder itself
        assert (view, left_out) == (src, 0)
