"""Crafted and damaged model folders (issue 11, items 1-3): every path that reads a folder (`load`, `mlxm info`,
`mlxm generate`, `mlxm convert`) refuses them with one line naming the file and the key, reads nothing outside the
folder, never blocks on a FIFO, never allocates what a config announces before checking it, and never feeds an id
past the embedding to MLX (which would read out of bounds: garbage or SIGSEGV)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

import mlxmodels
from mlxmodels.errors import ModelError
from tests.app.tiny import build_tiny
from tests.hostile.cli import mlxm, assert_refused

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def model(pristine, tmp_path):
    """A fresh copy of a loadable folder, inside tmp_path/sandbox (files outside it are the 'outside')."""
    return Path(shutil.copytree(pristine, tmp_path / "sandbox" / "model"))


def edit(folder: Path, name: str, **changes) -> dict:
    data = json.loads((folder / name).read_text())
    data.update(changes)
    (folder / name).write_text(json.dumps(data))
    return data


def split_into_index(folder: Path, shard: str) -> None:
    """Keep the weights but list them in an index under the shard name `shard`."""
    from mlxmodels.formats.safetensors import SafetensorsFile

    names = list(SafetensorsFile(folder / "model.safetensors").tensors)
    (folder / INDEX).write_text(json.dumps({"weight_map": {n: shard for n in names}}))


def assert_every_reader_refuses(folder: Path, *needles: str) -> None:
    """`mlxm info`, `mlxm generate` and `mlxm convert` all refuse the folder with the same kind of line."""
    assert_refused(mlxm(["info", "-m", folder]), *needles)
    assert_refused(mlxm(["generate", "-m", folder, "-p", "hi", "--max-tokens", "2"]), *needles)
    out = folder.parent / "out"
    assert_refused(mlxm(["convert", folder, out]), *needles)
    assert not out.exists()


# ---------------------------------------------------------------- 1. what a folder may name


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd.safetensors", "sub/../../x.safetensors",
                                   ".hidden.safetensors"])
def test_index_names_outside_the_folder(model, shard):
    outside = model.parent / "outside.safetensors"
    shutil.copy(model / "model.safetensors", outside)  # a valid file there: following the name would "work"
    split_into_index(model, shard)
    line = assert_refused(mlxm(["info", "-m", model]), INDEX)
    assert "not a shard file name" in line
    with pytest.raises(ModelError, match="not a shard file name"):
        mlxmodels.load(model)


def test_symlinked_shard_pointing_outside(model):
    outside = model.parent / "secret.safetensors"
    (model / "model.safetensors").rename(outside)
    (model / "model.safetensors").symlink_to(outside)
    assert_every_reader_refuses(model, "model.safetensors", "points outside the model folder")


def test_symlinked_config_pointing_outside(model):
    outside = model.parent / "config.json"
    (model / "config.json").rename(outside)
    (model / "config.json").symlink_to(outside)
    assert_every_reader_refuses(model, "config.json", "points outside the model folder")


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"])
def test_fifo_named_like_a_model_file(model, name):
    (model / name).unlink()
    os.mkfifo(model / name)  # opening it for reading would block forever
    run = mlxm(["generate", "-m", model, "-p", "hi", "--max-tokens", "2"], timeout=30)
    assert_refused(run, name, "FIFO, not a regular file", within=20)


def test_folder_named_like_a_shard(model):
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").mkdir()
    assert_every_reader_refuses(model, "model.safetensors", "is a folder, not a regular file")


def test_device_behind_a_symlink(model):
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").symlink_to("/dev/zero")
    assert_refused(mlxm(["info", "-m", model]), "model.safetensors", "points outside the model folder")


@pytest.mark.parametrize("index", ['{"weight_map": ["a", "b"]}', "[1, 2]", '{"weight_map": {"w": 3}}',
                                   "{" * 5000, '{"weight_map": {"w": "model.safetensors"}, "x": NaN}'])
def test_malformed_index(model, index):
    (model / INDEX).write_text(index)
    assert_refused(mlxm(["info", "-m", model]), INDEX)
    with pytest.raises(ModelError, match=INDEX):
        mlxmodels.load(model)


def test_hub_cache_snapshot_links_into_blobs_load(model, tmp_path):
    """huggingface_hub's cache: snapshots/<rev>/* are symlinks to ../../blobs/<hash>; those are inside."""
    repo = tmp_path / "models--org--tiny"
    snapshot, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, f in enumerate(sorted(model.iterdir())):
        shutil.copy(f, blobs / f"blob{i}")
        (snapshot / f.name).symlink_to(Path("../../blobs") / f"blob{i}")
    m, tok = mlxmodels.load(snapshot)
    assert tok is not None and m.spec.vocab_size == tok.max_token_id + 1


# ---------------------------------------------------------------- 2. config values


@pytest.mark.parametrize("key, value, needle", [
    ("num_hidden_layers", 10**6, "num_hidden_layers is 1000000; expected a whole number from 1 to 1024"),
    ("hidden_size", 10**12, "hidden_size is 1000000000000"),
    ("vocab_size", 2**40, "vocab_size"),
    ("num_attention_heads", "4", "num_attention_heads is '4'; expected a whole number"),
    ("num_attention_heads", 0, "num_attention_heads is 0"),
    ("num_key_value_heads", [2], "num_key_value_heads is [2]"),
    ("num_hidden_layers", True, "num_hidden_layers is True"),
    ("rms_norm_eps", -1e-5, "rms_norm_eps is -1e-05; expected a finite number > 0"),
    ("rope_theta", 0, "rope_theta is 0; expected a finite number > 0"),
    ("rope_scaling", {"rope_type": "linear", "factor": 0}, "rope_scaling.factor is 0"),
    ("rope_scaling", {"rope_type": "llama3"}, "rope_scaling.factor is None"),
    ("rope_scaling", {"rope_type": "warp"}, "rope_scaling.rope_type is 'warp'"),
    ("rope_scaling", [1, 2], "rope_scaling is [1, 2]"),
    ("quantization", {"bits": 7, "group_size": 64}, "quantization.bits is 7; expected one of 2, 3, 4, 5, 6, 8"),
    ("quantization", {"bits": 4, "group_size": 100}, "quantization.group_size is 100"),
    ("quantization", {"bits": 4, "group_size": 64, "model.layers.0.mlp.up_proj": {"bits": 9}},
     "quantization.model.layers.0.mlp.up_proj.bits is 9"),
    ("quantization", {"bits": 4, "group_size": 64, "model.layers.0.mlp.up_proj": "yes"},
     "quantization.model.layers.0.mlp.up_proj is 'yes'; expected an object of bits/group_size/mode, or true/false"),
    ("layer_types", ["full_attention"], "layer_types is 1 entries; expected one per layer (2)"),
    ("layer_types", ["full_attention", "mamba"], "layer_types"),
    ("tie_word_embeddings", "yes", "tie_word_embeddings is 'yes'; expected true or false"),
    ("eos_token_id", -1, "eos_token_id is -1"),
    ("hidden_size", 30, "hidden_size 30 is not divisible by num_attention_heads 4"),
    ("num_key_value_heads", 3, "num_key_value_heads is 3; expected a divisor of num_attention_heads (4)"),
])
def test_config_values_refused_before_anything_is_built(model, key, value, needle):
    edit(model, "config.json", **{key: value})
    for run in (mlxm(["info", "-m", model]), mlxm(["generate", "-m", model, "-p", "hi", "--max-tokens", "2"])):
        assert_refused(run, "config.json", needle, within=10)


def test_nested_text_config_is_checked_too(model):
    cfg = json.loads((model / "config.json").read_text())
    wrapped = {"model_type": "gemma3", "text_config": {**cfg, "num_hidden_layers": 10**6}}
    (model / "config.json").write_text(json.dumps(wrapped))
    assert_refused(mlxm(["info", "-m", model]), "config.json", "text_config.num_hidden_layers is 1000000")


@pytest.mark.parametrize("text, needle", [
    ('{"rms_norm_eps": NaN}', "NaN is not a JSON number"),
    ('{"rope_theta": Infinity}', "Infinity is not a JSON number"),
    ('{"rope_theta": 1e999}', "overflows"),
    ("[" * 100 + "]" * 100, "nests deeper than 64 levels"),
    ("[" * 100000, "config.json"),
    ('"just a string"', "must hold a JSON object"),
    ("\xff\xfe{}", "config.json"),
])
def test_config_files_that_json_would_half_accept(model, text, needle):
    (model / "config.json").write_bytes(text.encode("latin-1"))
    assert_refused(mlxm(["info", "-m", model]), "config.json", needle, within=10)


def test_absurd_sizes_are_refused_in_milliseconds(model):
    edit(model, "config.json", num_hidden_layers=1024, hidden_size=1 << 17, intermediate_size=1 << 20,
         vocab_size=1 << 22, num_attention_heads=1024, num_key_value_heads=1024)
    tic = time.monotonic()
    with pytest.raises(ModelError, match="config.json"):  # within bounds one by one; the weights disagree
        mlxmodels.load(model)
    assert time.monotonic() - tic < 10


@pytest.mark.parametrize("name, changes, needle", [
    ("tokenizer_config.json", {"bos_token": ["<s>"]}, "bos_token is ['<s>']"),
    ("tokenizer_config.json", {"add_bos_token": "true"}, "add_bos_token is 'true'; expected true or false"),
    ("tokenizer_config.json", {"chat_template": 42}, "chat_template is 42"),
    ("generation_config.json", {"temperature": "hot"}, "temperature is 'hot'"),
    ("generation_config.json", {"top_p": 0}, "top_p is 0"),
    ("generation_config.json", {"eos_token_id": [2, "x"]}, "eos_token_id"),
])
def test_side_configs_are_validated(model, name, changes, needle):
    if not (model / name).exists():
        (model / name).write_text("{}")
    edit(model, name, **changes)
    assert_refused(mlxm(["generate", "-m", model, "-p", "hi", "--max-tokens", "2"]), name, needle)


# ---------------------------------------------------------------- 3. vocabularies agree


def test_tokenizer_larger_than_the_embedding(tmp_path):
    from tests.app.tiny import save_ascii_tokenizer

    folder = build_tiny(tmp_path / "m")
    (folder / "tokenizer.json").unlink()
    vocab = save_ascii_tokenizer(folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["added_tokens"].append({"id": vocab, "content": "<far>", "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True})
    (folder / "tokenizer.json").write_text(json.dumps(data))  # one token more than the model embeds
    assert_refused(mlxm(["generate", "-m", folder, "-p", "<far>", "--max-tokens", "2"]),
            f"ids up to {vocab}", f"vocab_size is {vocab}")


def test_eos_id_beyond_the_embedding(model):
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 4000]}))
    assert_refused(mlxm(["generate", "-m", model, "-p", "hi", "--max-tokens", "2"]),
            "eos_token_id 4000 is outside the model's vocabulary (0..99)")


def test_prompt_ids_beyond_the_embedding_are_an_error_not_a_read(pristine):
    m, tok = mlxmodels.load(pristine)
    for ids in ([1, 2, 100], [1, -1], [10**6]):
        with pytest.raises(ModelError, match="outside the model's vocabulary"):
            mlxmodels.generate(m, tok, ids, max_tokens=2)
    from mlxmodels.batch import BatchGenerator

    with pytest.raises(ModelError, match="token id 100 is outside"):
        BatchGenerator(m, num_blocks=8).add([3, 100])


@pytest.mark.parametrize("target_rows, draft_rows", [(100, 160), (160, 100)])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_draft_model_with_another_embedding_size(tmp_path, target_rows, draft_rows, temperature):
    """A draft whose embedding is larger (ids past the target's) or smaller than the target's (the target can
    sample ids past the draft's): drafts stay in the target's range and the target's tokens in the draft's;
    greedy output is the target's own."""
    target, tok = mlxmodels.load(build_tiny(tmp_path / "target", vocab_size=target_rows))
    draft, _ = mlxmodels.load(build_tiny(tmp_path / "draft", seed=3, vocab_size=draft_rows, num_hidden_layers=1))
    args = dict(max_tokens=24, temperature=temperature, seed=1)
    out = mlxmodels.generate(target, tok, "hello", draft=draft, num_draft=3, **args)
    if temperature == 0:
        assert out == mlxmodels.generate(target, tok, "hello", **args)


def rewrite_weights(folder: Path, fn) -> None:
    import mlx.core as mx

    w = dict(mx.load(str(folder / "model.safetensors")))
    fn(w)
    mx.save_safetensors(str(folder / "model.safetensors"), w)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_not_run(model, value):
    def poison(w):
        w["model.layers.1.mlp.down_proj.weight"][3, 5] = value

    rewrite_weights(model, poison)
    assert_refused(mlxm(["generate", "-m", model, "-p", "hi", "--max-tokens", "2"]),
            "model.layers.1.mlp.down_proj.weight holds NaN or infinite values")


def test_integer_weights_where_floats_belong(model):
    import mlx.core as mx

    def as_int(w):
        w["model.norm.weight"] = w["model.norm.weight"].astype(mx.int32)

    rewrite_weights(model, as_int)
    assert_refused(mlxm(["info", "-m", model]), "model.norm.weight")  # info reads headers only: shapes fit, it describes
    assert_refused(mlxm(["generate", "-m", model, "-p", "hi", "--max-tokens", "2"]),
            "model.norm.weight is stored as int32 but the model needs float32")


def test_convert_never_copies_a_tokenizer_file_from_outside(model):
    secret = model.parent / "secret.txt"
    secret.write_text("not yours")
    (model / "tokenizer_extra.json").symlink_to(secret)
    out = model.parent / "out"
    assert_refused(mlxm(["convert", model, out]), "tokenizer_extra.json", "points outside the model folder")
    assert not out.exists()


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True])
def test_seeds_mlx_cannot_take_are_a_clear_error(pristine, seed):
    m, tok = mlxmodels.load(pristine)
    with pytest.raises(ValueError, match="seed must be a whole number from 0 to 2\\*\\*64 - 1"):
        mlxmodels.generate(m, tok, "hi", max_tokens=2, temperature=1.0, seed=seed)


def add_header_entry(folder: Path, name: str, entry: dict) -> None:
    """Rewrite model.safetensors with one more header entry (the data unchanged)."""
    import struct

    raw = (folder / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header[name] = entry
    text = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


@pytest.mark.parametrize("shape", [[0, 2**63], [0, 2**31], [1] * 9])
def test_shapes_mlx_cannot_hold(model, shape):
    add_header_entry(model, "junk", {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]})
    for args in (["info", "-m", model], ["generate", "-m", model, "-p", "hi"]):
        assert_refused(mlxm(args), "model.safetensors", "'junk'", "which MLX cannot hold")


def test_escape_sequences_in_names_never_reach_the_terminal(model):
    add_header_entry(model, "evil\x1b]0;pwned\x07\x1b[2J", {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]})
    line = assert_refused(mlxm(["generate", "-m", model, "-p", "hi"]), "unexpected tensor")
    assert "\x1b" not in line and "\x07" not in line
    run = mlxm(["info", "-m", f"/tmp/no\x1b]0;pwned\x07such"])
    assert "\x1b" not in assert_refused(run, "not a model folder")


@pytest.mark.parametrize("args, needle", [
    (["info", "-m", "~nosuchuser-mlxm/model"], "no such user's home folder"),
    (["info", "-m", ""], "-m is empty"),
])
def test_model_argument_edges(args, needle):
    assert_refused(mlxm(args), needle)


def test_closed_stdout_is_one_line_not_silence(pristine):
    import shlex
    import subprocess
    import sys

    for args in (["info", "-m", str(pristine)], ["generate", "-m", str(pristine), "-p", "hi"]):
        command = " ".join(map(shlex.quote, [sys.executable, "-m", "app.cli", *args])) + " >&-"
        p = subprocess.run(["bash", "-c", command], stderr=subprocess.PIPE, timeout=60,
                           cwd=Path(__file__).resolve().parents[2])
        assert p.returncode == 1
        assert p.stderr.decode().strip() == ("mlxm: error: stdout is closed; give the command somewhere to write "
                                             "(a file, a pipe, a terminal)")


@pytest.mark.parametrize("max_tokens", [2.5, float("nan"), float("inf"), True, 0, -2])
def test_max_tokens_that_would_never_be_reached(pristine, max_tokens):
    m, tok = mlxmodels.load(pristine)
    with pytest.raises(ValueError, match="max_tokens must be a whole number"):
        mlxmodels.generate(m, tok, "hi", max_tokens=max_tokens)


@pytest.mark.parametrize("ids", [[1.7, 2.9], [True, False], [3, 2**31 + 5], [2**63]])
def test_prompt_ids_that_are_not_ids(pristine, ids):
    m, tok = mlxmodels.load(pristine)
    with pytest.raises(ModelError, match="is not a whole number in the model's vocabulary"):
        mlxmodels.generate(m, tok, ids, max_tokens=2)


def test_learned_positions_end_generation_instead_of_reading_past_the_table():
    from mlxmodels.config import HFConfig
    from mlxmodels.decoder import Decoder
    from mlxmodels.families import build_spec

    _, spec = build_spec(HFConfig(model_type="gpt2", n_embd=32, n_layer=1, n_head=2, n_positions=16, vocab_size=50))
    model = Decoder(spec)
    out = list(mlxmodels.stream_generate(model, None, [1, 2, 3, 4], max_tokens=-1))
    assert len(out) == 12  # 16 positions - 4 for the prompt
    with pytest.raises(ModelError, match="needs 17 positions but the model has 16"):
        list(mlxmodels.stream_generate(model, None, list(range(16)), max_tokens=4))
    import mlx.core as mx

    from mlxmodels.errors import ContextError

    with pytest.raises(ContextError, match="past the model's 16 learned positions"):
        model(mx.zeros((1, 17), dtype=mx.int32), cache=model.make_cache())


def test_no_limit_means_until_the_context_is_full(tmp_path):
    m, tok = mlxmodels.load(build_tiny(tmp_path / "m", max_position_embeddings=48))
    import itertools

    out = list(itertools.islice(mlxmodels.stream_generate(m, tok, [5] * 8, max_tokens=-1), 100))  # bounded if not
    assert len(out) <= 40 and (len(out) == 40 or out[-1].finish_reason == "stop")


def test_bidi_overrides_in_names_are_shown_as_replacements(model):
    add_header_entry(model, "model.\u202enorm.weight", {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]})
    line = assert_refused(mlxm(["generate", "-m", model, "-p", "hi"]), "unexpected tensor")
    assert "\u202e" not in line and "model.\ufffdnorm.weight" in line
