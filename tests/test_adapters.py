"""LoRA/DoRA adapters trained by mlx_lm.lora itself (a few steps on a tiny model): our logits equal mlx-lm's with the
same adapter, on float and quantized bases, over stacked experts and MLA; fused equals unfused; the CLI flags; hostile
adapter folders are refused in one line."""

import json
import shutil
import types

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlxmodels
from mlxmodels.adapters import AdapterError
from mlxmodels.errors import ModelError
from tests.dialects import legacy
from tests.families.test_families import CASES
from tests.oracle import build_hf, build_tiny_llama, edit_config, save_byte_tokenizer

TOL = 1e-4  # float32 throughout: the same products summed in another order
IDS = mx.array([[5, 6, 7, 8, 100, 200, 33, 47, 12]])
TEXT = ["the quick brown fox jumps over the lazy dog", "a tiny model learns a little", "adapters change replies"]


def train(model, out, kind="lora", num_layers=2):
    """mlx_lm.lora's own training run: 3 steps at a high learning rate, so the adapter moves the logits visibly."""
    from mlx_lm import lora

    data = out.parent / f"{out.name}-data"
    data.mkdir()
    for split in ("train", "valid"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXT))
    args = dict(lora.CONFIG_DEFAULTS, model=str(model), train=True, data=str(data), fine_tune_type=kind, iters=3,
                batch_size=2, num_layers=num_layers, learning_rate=1e-2, val_batches=1, steps_per_eval=1000,
                steps_per_report=1000, save_every=1000, adapter_path=str(out), trust_remote_code=False)
    lora.run(types.SimpleNamespace(**args))
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """A float tiny Llama, its 8-bit conversion (ours, which mlx-lm loads), a tiny Qwen3-MoE and DeepSeek-V3 (MLA,
    routed and shared experts), all with tokenizers."""
    from quantize.convert import Options, convert
    from quantize.recipes import Setting

    root = tmp_path_factory.mktemp("adapter-bases")
    llama = build_tiny_llama(root / "llama")
    convert(str(llama), root / "llama-q8", Options(quantize=True, setting=Setting.for_mode(bits=8, group_size=32)))
    for name, case in (("moe", "qwen3_moe"), ("mla", "deepseek_v3")):
        model_type, config, _ = CASES[case]
        build_hf(model_type, root / name, **dict(config, vocab_size=259))
        save_byte_tokenizer(root / name)
        edit_config(root / name, legacy)  # the dialect mlx-lm reads
    return {"float": llama, "q8": root / "llama-q8", "moe": root / "moe", "mla": root / "mla"}


@pytest.fixture(scope="module")
def trained(bases, tmp_path_factory):
    """(base, kind, num_layers) -> an adapter folder, trained once for the module."""
    done = {}

    def get(base, kind="lora", num_layers=2):
        key = (base, kind, num_layers)
        if key not in done:
            done[key] = train(bases[base], tmp_path_factory.mktemp("-".join(map(str, key))) / "adapter", kind,
                              num_layers)
        return done[key]
    return get


@pytest.fixture(scope="module")
def lora_adapter(trained):
    return trained("float")


def assert_same_as_mlx_lm(folder, adapter):
    import mlx_lm

    ours, _ = mlxmodels.load(folder, adapter_path=adapter)
    base, _ = mlxmodels.load(folder)
    ref, _ = mlx_lm.load(str(folder), adapter_path=str(adapter))
    got, want, plain = (np.array(m(IDS).astype(mx.float32)) for m in (ours, ref, base))
    np.testing.assert_allclose(got, want, atol=TOL, rtol=TOL)
    assert np.abs(plain - want).max() > 0.1, "the adapter should move the logits; it was not applied or not trained"


@pytest.mark.parametrize("base,kind,num_layers", [("float", "dora", 1), ("q8", "lora", 2), ("q8", "dora", 2),
                                                  ("moe", "lora", 2), ("mla", "lora", 3)])
def test_logits_equal_mlx_lm(bases, trained, base, kind, num_layers):
    assert_same_as_mlx_lm(bases[base], trained(base, kind, num_layers))


def test_lora_logits_equal_mlx_lm(bases, lora_adapter):
    assert_same_as_mlx_lm(bases["float"], lora_adapter)


def test_batched_paged_decoding_of_an_adapted_model_equals_alone(bases, trained):
    """serve's path (paged caches, batched) runs the same adapted layers: each sequence's tokens as generated alone."""
    from mlxmodels.batch import generate_batch

    model, tokenizer = mlxmodels.load(bases["moe"], adapter_path=trained("moe"))
    prompts = [[5, 6, 7, 8], [100, 101], [40, 41, 42, 43, 44, 45]]
    alone = [[r.token for r in mlxmodels.stream_generate(model, tokenizer, p, max_tokens=6)] for p in prompts]
    assert generate_batch(model, prompts, max_tokens=6, num_blocks=32, block_size=4) == alone


def test_adapter_identity_tells_adapters_apart(bases, trained):
    """What a prompt cache may key on: the same adapter gives the same identity, another adapter another, none none."""
    def identity(adapter):
        return getattr(mlxmodels.load(bases["float"], adapter_path=adapter)[0], "adapter_identity", None)

    lora, dora = trained("float"), trained("float", "dora", 1)
    assert identity(lora) == identity(lora) != identity(dora)
    assert not hasattr(mlxmodels.load(bases["float"])[0], "adapter_identity")


# ------------------------------------------------------------------------------------------ fused (convert)


def logits(folder, adapter=None):
    model, _ = mlxmodels.load(folder, adapter_path=adapter)
    return np.array(model(IDS).astype(mx.float32))


def fuse(src, out, adapter, **options):
    from quantize.convert import Options, convert

    return convert(str(src), out, Options(adapter_path=str(adapter), **options)).folder


@pytest.mark.parametrize("base,kind,num_layers", [("float", "lora", 2), ("float", "dora", 1), ("moe", "lora", 2),
                                                  ("mla", "lora", 3)])
def test_fused_equals_unfused(bases, trained, tmp_path, base, kind, num_layers):
    """convert --adapter-path, and fuse_adapter in memory (what --report and scripts/bench_adapters.py use)."""
    from mlxmodels.adapters import fuse_adapter

    adapter = trained(base, kind, num_layers)
    fused = fuse(bases[base], tmp_path / "fused", adapter)
    unfused = logits(bases[base], adapter)
    np.testing.assert_allclose(logits(fused), unfused, atol=TOL, rtol=TOL)
    model = fuse_adapter(mlxmodels.load(bases[base], adapter_path=adapter)[0])
    assert not any("lora" in name for name, _ in tree_flatten(model.parameters()))
    np.testing.assert_allclose(np.array(model(IDS)), unfused, atol=TOL, rtol=TOL)


def test_fused_then_quantized_in_one_convert(bases, trained, tmp_path):
    """-q with --adapter-path quantizes the fused weights: the same folder as fusing, then converting with -q."""
    from quantize.convert import Options, convert
    from quantize.recipes import Setting

    setting = Setting.for_mode(bits=4, group_size=32)
    adapter = trained("float", "dora", 1)
    once = fuse(bases["float"], tmp_path / "once", adapter, quantize=True, setting=setting)
    twice = convert(str(fuse(bases["float"], tmp_path / "fused", adapter)), tmp_path / "twice",
                    Options(quantize=True, setting=setting)).folder
    np.testing.assert_array_equal(logits(once), logits(twice))


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_fused_into_quantized_base_equals_mlx_lm_fuse(bases, trained, tmp_path, kind):
    """An 8-bit base keeps its quantization; the adapted layers are fused and quantized again, as mlx_lm.fuse does."""
    import subprocess
    import sys

    from mlxmodels.adapters import fuse_adapter

    adapter = trained("q8", kind)
    ours = fuse(bases["q8"], tmp_path / "ours", adapter)
    subprocess.run([sys.executable, "-m", "mlx_lm", "fuse", "--model", str(bases["q8"]), "--adapter-path",
                    str(adapter), "--save-path", str(tmp_path / "theirs")], check=True, capture_output=True)
    config = json.loads((ours / "config.json").read_text())
    assert config["quantization"]["bits"] == 8
    np.testing.assert_allclose(logits(ours), logits(tmp_path / "theirs"), atol=TOL, rtol=TOL)
    assert np.abs(logits(ours) - logits(bases["q8"], adapter)).max() < 0.05  # one more 8-bit rounding
    in_memory = fuse_adapter(mlxmodels.load(bases["q8"], adapter_path=adapter)[0])
    np.testing.assert_allclose(np.array(in_memory(IDS)), logits(ours), atol=TOL, rtol=TOL)


def test_report_compares_with_the_adapted_source(bases, lora_adapter, tmp_path):
    """convert --adapter-path -q --report: the reference is the source with the adapter, so the KL is the
    quantization's alone (an in-memory 8-bit setting too); a quantized source cannot be the float reference."""
    from quantize import report
    from quantize.convert import ConvertError
    from quantize.recipes import Setting

    setting = Setting.for_mode(bits=8, group_size=32)
    out = fuse(bases["float"], tmp_path / "q8", lora_adapter, quantize=True, setting=setting)
    ids = report.token_ids(bases["float"], " ".join(TEXT) * 3, "text", 200)
    adapted, _ = report.report(ids, bases["float"], out, [setting], context=32, adapter_path=str(lora_adapter))
    plain, _ = report.report(ids, bases["float"], out, context=32)
    assert adapted[0].label == "float (source + adapter, float32 compute)"
    assert adapted[1].kl < 1e-2 and plain[1].kl > 100 * adapted[1].kl
    assert adapted[2].kl == pytest.approx(adapted[1].kl, rel=1e-3)  # fused then quantized in memory == OUT
    with pytest.raises(ConvertError, match="quantized already"):
        report.token_ids(bases["q8"], " ".join(TEXT), "text", 200)


def test_convert_adapter_path_flag(bases, lora_adapter, tmp_path, capsys):
    from app import cli

    assert cli.main(["convert", str(bases["float"]), str(tmp_path / "out"), "--adapter-path", str(lora_adapter)]) == 0
    np.testing.assert_allclose(logits(tmp_path / "out"), logits(bases["float"], lora_adapter), atol=TOL, rtol=TOL)
    code = cli.main(["convert", str(bases["float"]), str(tmp_path / "bad"), "--adapter-path", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "not an adapter folder" in err and not (tmp_path / "bad").exists()


def test_quantizing_a_quantized_base_again_is_refused(bases, lora_adapter, tmp_path):
    from quantize.convert import ConvertError
    from quantize.recipes import Setting

    with pytest.raises(ConvertError, match="fusing an adapter keeps that quantization"):
        fuse(bases["q8"], tmp_path / "out", lora_adapter, quantize=True, setting=Setting.for_mode(bits=4))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ hostile adapter folders


def edit_adapter_config(cfg):
    return lambda folder: (folder / "adapter_config.json").write_text(json.dumps(cfg(json.loads(
        (folder / "adapter_config.json").read_text()))))


def edit_tensors(fn):
    def edit(folder):
        path = folder / "adapters.safetensors"
        tensors = dict(mx.load(str(path)))
        fn(tensors)
        path.unlink()
        mx.save_safetensors(str(path), tensors)
    return edit


def first(tensors, leaf):
    return next(k for k in sorted(tensors) if k.endswith(leaf))


HOSTILE = {
    "no config": (lambda f: (f / "adapter_config.json").unlink(), "has no adapter_config.json"),
    "no weights": (lambda f: (f / "adapters.safetensors").unlink(), "has no adapters.safetensors"),
    "config not json": (lambda f: (f / "adapter_config.json").write_text("{rank: 8"), "not valid JSON"),
    "config a list": (lambda f: (f / "adapter_config.json").write_text("[]"), "not a JSON object"),
    "full fine-tune": (edit_adapter_config(lambda c: dict(c, fine_tune_type="full")), "full fine-tune"),
    "unknown kind": (edit_adapter_config(lambda c: dict(c, fine_tune_type="ia3")), "is not lora or dora"),
    "too many layers": (edit_adapter_config(lambda c: dict(c, num_layers=3)), "num_layers 3"),
    "num_layers text": (edit_adapter_config(lambda c: dict(c, num_layers="2")), "num_layers '2'"),
    "no lora_parameters": (edit_adapter_config(lambda c: {k: v for k, v in c.items() if k != "lora_parameters"}),
                           "no lora_parameters"),
    "rank 0": (edit_adapter_config(lambda c: dict(c, lora_parameters=dict(c["lora_parameters"], rank=0))), "rank 0"),
    "rank mismatch": (edit_adapter_config(lambda c: dict(c, lora_parameters=dict(c["lora_parameters"], rank=4))),
                      "with rank 4 needs"),
    "alpha not scale": (edit_adapter_config(lambda c: dict(c, lora_parameters={"rank": 8, "alpha": 16})), "not alpha"),
    "dora without m": (edit_adapter_config(lambda c: dict(c, fine_tune_type="dora")), "needs lora_a, lora_b, m"),
    "other leaf": (edit_tensors(lambda t: t.update(x=t.pop(first(t, "lora_a")))), "is not an adapter tensor"),
    "outside the layers": (edit_tensors(lambda t: t.update({"lm_head.lora_a": t.pop(first(t, "lora_a"))})),
                           "not in a layer of this model"),
    "past the layers": (edit_tensors(lambda t: t.update({"model.layers.2.mlp.up_proj.lora_a": mx.zeros((64, 8))})),
                        "outside the last 2 layer(s)"),
    "twice": (edit_tensors(lambda t: t.update({f"language_model.{first(t, 'lora_a')}": t[first(t, "lora_a")]})),
              "given twice"),
    "unknown module": (edit_tensors(lambda t: t.update({"model.layers.1.self_attn.w_proj.lora_a": mx.zeros((64, 8))})),
                       "where this model has no linear layer"),
    "wrong shape": (edit_tensors(lambda t: t.update({first(t, "lora_b"): mx.zeros((8, 3))})), "has shape (8, 3)"),
    "integer tensor": (edit_tensors(lambda t: t.update({first(t, "lora_b"): mx.zeros(t[first(t, "lora_b")].shape,
                                                                                     mx.int32)})), "not a float"),
    "missing lora_b": (edit_tensors(lambda t: t.pop(first(t, "lora_b"))), "needs lora_a, lora_b"),
    "nan": (edit_tensors(lambda t: t.update({first(t, "lora_a"): t[first(t, "lora_a")] * mx.nan})), "NaN"),
    "empty": (edit_tensors(lambda t: t.clear()), "holds no adapter tensor"),
    "weights link outside": (lambda f: ((f / "adapters.safetensors").unlink(),
                                        (f / "adapters.safetensors").symlink_to("/etc/passwd")), "outside"),
    "weights not safetensors": (lambda f: (f / "adapters.safetensors").write_bytes(b"\xff" * 64), "safetensors"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_adapter_refused_in_one_line(bases, lora_adapter, tmp_path, case):
    damage, words = HOSTILE[case]
    folder = tmp_path / "adapter"
    shutil.copytree(lora_adapter, folder)
    damage(folder)
    with pytest.raises(ModelError) as e:
        mlxmodels.load(bases["float"], adapter_path=folder)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_multimodal_wrapper_prefix(bases, lora_adapter, tmp_path):
    """mlx-lm's multimodal models (Gemma 3, Llama 4) keep the text model under language_model: their adapters load."""
    folder = tmp_path / "adapter"
    shutil.copytree(lora_adapter, folder)
    edit_tensors(lambda t: t.update({f"language_model.{k}": t.pop(k) for k in list(t)}))(folder)
    np.testing.assert_array_equal(logits(bases["float"], folder), logits(bases["float"], lora_adapter))


def test_adapter_over_layers_we_name_differently_is_refused(tmp_path):
    """GPT-2's mlx-lm adapter adapts model.h.N.attn.c_attn (q, k and v joined), which we load split: one line saying
    what to do instead, not a crash."""
    from quantize.convert import convert

    model_type, config, _ = CASES["gpt2"]
    build_hf(model_type, tmp_path / "hf", **dict(config, vocab_size=259, n_positions=128))
    save_byte_tokenizer(tmp_path / "hf")
    folder = convert(str(tmp_path / "hf"), tmp_path / "gpt2").folder  # mlx-lm's layout, which its lora loads
    adapter = train(folder, tmp_path / "adapter")
    with pytest.raises(AdapterError, match="fuse it with mlx_lm.fuse") as e:
        mlxmodels.load(folder, adapter_path=adapter)
    assert "\n" not in str(e.value)


def test_missing_adapter_folder(bases, tmp_path):
    with pytest.raises(AdapterError, match="no such folder"):
        mlxmodels.load(bases["float"], adapter_path=tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------ the command line


def test_generate_with_adapter_path(bases, lora_adapter, capsys):
    from app import cli

    model, tokenizer = mlxmodels.load(bases["float"], adapter_path=lora_adapter)
    want = mlxmodels.generate(model, tokenizer, "the quick", max_tokens=12)
    plain = mlxmodels.generate(*mlxmodels.load(bases["float"]), "the quick", max_tokens=12)
    assert want != plain, "the adapter should change this greedy reply"
    capsys.readouterr()
    args = ["generate", "-m", str(bases["float"]), "--adapter-path", str(lora_adapter), "-p", "the quick", "--raw",
            "--max-tokens", "12"]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.rstrip("\n") == want


def test_bench_applies_the_adapter_in_both_tools(bases, lora_adapter, capsys):
    """Each worker loads the adapter (its parameters add to the weight bytes), ours and mlx-lm's alike."""
    from app import cli
    from app.bench import weight_bytes

    assert cli.main(["bench", "-m", str(bases["float"]), "--adapter-path", str(lora_adapter), "-p", "8", "-g", "2",
                     "-n", "1", "--compare", "mlx-lm", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    base = weight_bytes(mlxmodels.load(bases["float"])[0])
    adapted = weight_bytes(mlxmodels.load(bases["float"], adapter_path=lora_adapter)[0])
    assert report["adapter"] == str(lora_adapter.absolute()) and "peer_failed" not in report
    assert adapted > base and {t: r["weight_bytes"] for t, r in report["tools"].items()} == {
        "ours": adapted, "mlx-lm": adapted}


@pytest.mark.parametrize("command", [["generate", "-p", "hi", "--raw"], ["chat"], ["serve", "--port", "0"],
                                     ["bench", "-p", "8", "-g", "2"]])
def test_bad_adapter_path_is_one_line(bases, tmp_path, capsys, command):
    """Each command hands --adapter-path to the loader, which refuses a folder without an adapter before any work."""
    from app import cli

    code = cli.main([*command, "-m", str(bases["float"]), "--adapter-path", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "has no adapter_config.json" in err
