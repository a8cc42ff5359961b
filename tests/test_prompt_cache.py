"""Prompt-cache files: a save/load round trip answers exactly as the uninterrupted run, for every cache kind (quantized
contiguous and latent caches included); a file
for another model and hostile files are refused in one line; mlx-lm's files are read for the caches both have."""

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlxmodels
from mlxmodels.config import HFConfig
from mlxmodels.decoder import Decoder
from mlxmodels.families import get_adapter
from mlxmodels.formats.safetensors import SafetensorsFile, save_file
from mlxmodels.prompt_cache import PromptCacheError
from tests.case_model import load_case

PROMPT, PROBE = list(range(3, 25)), [[7, 3, 9]]  # 22 tokens: past the sliding window and chunk (8) of the cases


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    cached = {}

    def get(name):
        if name not in cached:
            cached[name] = load_case(name, tmp_path_factory.mktemp(name))
        return cached[name]

    return get


def continued(model, cache):
    return np.array(model(mx.array(PROBE), cache=cache))


# dense (with a sliding layer), sliding + global, chunked, MLA; then the bounded cache
@pytest.mark.parametrize("name, options", [("qwen3", {}), ("gemma3", {}), ("llama4", {}), ("deepseek_v3", {}),
                                           ("llama3", {"max_kv_size": 12}), ("gemma3", {"max_kv_size": 12}),
                                           ("deepseek_v3", {"max_kv_size": 12})])
def test_round_trip_equals_the_uninterrupted_run(models, tmp_path, name, options):
    model = models(name)[0]
    cache = model.make_cache(**options)
    model(mx.array([PROMPT]), cache=cache)
    mlxmodels.save_prompt_cache(tmp_path / "doc.cache", cache, model=model, tokens=PROMPT, metadata={"a": "b"})
    loaded, meta = mlxmodels.load_prompt_cache(tmp_path / "doc.cache", model)
    assert meta["tokens"] == PROMPT and meta["source"] == "mlxmodels" and meta["metadata"] == {"a": "b"}
    assert [type(c) for c in loaded] == [type(c) for c in cache]
    np.testing.assert_array_equal(continued(model, loaded), continued(model, cache))


@pytest.mark.parametrize("family", ["llama", "deepseek_v3"])  # KV heads' rows; MLA's [latent | rope key] rows
@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_round_trip_equals_the_uninterrupted_run(tmp_path, family, bits):
    """Codes, scales and biases come back as saved: the loaded cache continues bit for bit as the one kept in
    memory. The case models' heads (16 wide) are narrower than the smallest group mx.quantize takes, so these are
    the paged tests' models (rows 32 and 64 wide)."""
    from tests.parts.test_paged_cache import FAMILIES

    mx.random.seed(len(family))
    model = Decoder(get_adapter(family).spec(HFConfig(dict(FAMILIES[family], model_type=family))))
    cache = model.make_cache(kv_bits=bits, kv_group_size=32)
    model(mx.array([PROMPT]), cache=cache)
    mlxmodels.save_prompt_cache(tmp_path / "doc.cache", cache, model=model, tokens=PROMPT)
    loaded, meta = mlxmodels.load_prompt_cache(tmp_path / "doc.cache", model)
    assert [type(c) for c in loaded] == [type(c) for c in cache] and type(cache[0]).__name__.startswith("Quantized")
    assert [(c.bits, c.group_size) for c in loaded] == [(bits, 32)] * len(cache)
    np.testing.assert_array_equal(continued(model, loaded), continued(model, cache))


def saved(models, tmp_path, name="qwen3"):
    model = models(name)[0]
    cache = model.make_cache()
    model(mx.array([PROMPT]), cache=cache)
    path = tmp_path / "doc.cache"
    mlxmodels.save_prompt_cache(path, cache, model=model, tokens=PROMPT)
    return model, path


def test_a_file_for_another_model_is_refused(models, tmp_path):
    _, path = saved(models, tmp_path)
    with pytest.raises(PromptCacheError, match="made for another model"):
        mlxmodels.load_prompt_cache(path, models("llama3")[0])


def test_a_file_made_without_the_adapter_is_refused(models, tmp_path):
    """An adapter applied on the fly changes the model's keys and values: a cache made without it (or with another)
    is another model's."""
    model, path = saved(models, tmp_path)
    model.adapter_identity = "an adapter"
    try:
        with pytest.raises(PromptCacheError, match="made for another model"):
            mlxmodels.load_prompt_cache(path, model)
    finally:
        del model.adapter_identity


def rewrite(path: Path, arrays=None, meta=None):
    """The saved file with some arrays and metadata entries replaced (None as a value: removed)."""
    f = SafetensorsFile(path)
    tensors = {n: f.array(n) for n in f.tensors}
    metadata = dict(f.metadata)
    f.close()
    for store, changes in ((tensors, arrays or {}), (metadata, meta or {})):
        for k, v in changes.items():
            store.pop(k) if v is None else store.__setitem__(k, v)
    save_file(path, tensors, metadata)


HOSTILE = {
    "tokens not JSON": (None, {"tokens": "[1, 2"}),
    "token past the vocabulary": (None, {"tokens": str(list(range(21)) + [10 ** 9])}),
    "unknown cache class": (None, {"caches": '["KVCache", "os.system"]'}),
    "too few layers": (None, {"caches": '["KVCache"]'}),
    "huge offset": (None, {"0.meta": '{"offset": "99999999999999"}'}),
    "offset past the arrays": (None, {"0.meta": '{"offset": "21"}'}),
    "meta not a dict": (None, {"0.meta": '["offset"]'}),
    "array of another shape": ({"0.0": mx.zeros((1, 2, 22, 64))}, None),
    "array too long": ({"0.0": mx.zeros((1, 2, 30, 16)), "0.1": mx.zeros((1, 2, 30, 16))}, None),
    "integer array": ({"0.0": mx.zeros((1, 2, 22, 16), dtype=mx.int64)}, None),
    "missing array": ({"0.1": None}, None),
    "stray array": ({"9.0": mx.zeros((1, 2, 22, 16))}, None),
    "sliding window changed": (None, {"1.meta": '{"offset": "22", "window": "64", "slack": "0"}'}),
    "not our format": (None, {"format": "something-else"}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_files_are_refused_in_one_line(models, tmp_path, case):
    model, path = saved(models, tmp_path)
    rewrite(path, *HOSTILE[case])
    with pytest.raises(PromptCacheError) as e:
        mlxmodels.load_prompt_cache(path, model)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_damaged_safetensors_is_refused(models, tmp_path):
    model, path = saved(models, tmp_path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated|damaged"):
        mlxmodels.load_prompt_cache(path, model)


def recorded_run(model, chunks):
    """Feed PROMPT in `chunks`; -> (our cache, per layer the (k, v) each chunk stored)."""
    cache, seen = model.make_cache(), []
    for c in cache:
        seen.append([])
        store = c.update_and_fetch
        c.update_and_fetch = lambda k, v, store=store, log=seen[-1]: (log.append((k, v)), store(k, v))[1]
    start = 0
    for n in chunks:
        model(mx.array([PROMPT[start: start + n]]), cache=cache)
        start += n
    return cache, seen


@pytest.mark.parametrize("name", ["llama3", "gemma3"])  # mlx-lm's KVCache, and RotatingKVCache + KVCache
def test_reads_mlx_lm_prompt_cache_files(models, tmp_path, name):
    """mlx-lm's caches filled with our model's keys and values as mlx-lm fills them (a padded buffer; a ring that
    has wrapped), saved by mlx-lm, then read by us: the continuation equals ours."""
    pytest.importorskip("mlx_lm")
    from mlx_lm.models import cache as lm

    model = models(name)[0]
    chunks = [16] + [1] * 6  # a prefill past the window (8), then decode steps that wrap the ring
    ours, seen = recorded_run(model, chunks)
    theirs = [lm.RotatingKVCache(max_size=c.window, keep=0) if hasattr(c, "window") else lm.KVCache() for c in ours]
    for c, log in zip(theirs, seen):
        for k, v in log:
            c.update_and_fetch(k, v)
    lm.save_prompt_cache(str(tmp_path / "lm.safetensors"), theirs, {"model": "tiny"})
    loaded, meta = mlxmodels.load_prompt_cache(tmp_path / "lm.safetensors", model)
    assert meta["source"] == "mlx-lm" and meta["tokens"] is None and meta["metadata"] == {"model": "tiny"}
    np.testing.assert_allclose(continued(model, loaded), continued(model, ours), atol=1e-5, rtol=0)


def test_mlx_lm_bounded_caches_are_refused(tmp_path, models):
    pytest.importorskip("mlx_lm")
    from mlx_lm.models import cache as lm

    model = models("llama3")[0]
    theirs = [lm.RotatingKVCache(max_size=16, keep=4) for _ in model.spec.layers]
    for c in theirs:
        c.update_and_fetch(mx.zeros((1, 2, 3, 16)), mx.zeros((1, 2, 3, 16)))
    lm.save_prompt_cache(str(tmp_path / "lm.safetensors"), theirs)
    with pytest.raises(ValueError, match="keep=4"):
        mlxmodels.load_prompt_cache(tmp_path / "lm.safetensors", model)


@pytest.mark.parametrize("change", [({"0.2": mx.zeros((2,), dtype=mx.int32)}, None),  # offset not a scalar
                                    ({"0.2": mx.array(10 ** 6)}, None),  # offset past what the arrays hold
                                    (None, {"1.1": None}),  # a layer missing
                                    ({"0.0": mx.zeros((1, 2, 22, 99))}, None)])  # rows wider than the heads
def test_hostile_mlx_lm_files_are_refused_in_one_line(tmp_path, models, change):
    pytest.importorskip("mlx_lm")
    from mlx_lm.models import cache as lm

    model = models("llama3")[0]
    theirs = [lm.KVCache() for _ in model.spec.layers]
    for c in theirs:
        c.update_and_fetch(mx.zeros((1, 2, 22, 16)), mx.zeros((1, 2, 22, 16)))
    path = tmp_path / "lm.safetensors"
    lm.save_prompt_cache(str(path), theirs)
    rewrite(path, *change)
    with pytest.raises(ValueError) as e:
        mlxmodels.load_prompt_cache(path, model)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_a_bounded_cache_with_other_rope_frequencies_is_refused(models, tmp_path):
    """A sink cache's RoPE periods come from the file: they must be the layer's, or its sinks would move wrongly."""
    model = models("llama3")[0]
    cache = model.make_cache(max_kv_size=12)
    model(mx.array([PROMPT]), cache=cache)
    path = tmp_path / "doc.cache"
    mlxmodels.save_prompt_cache(path, cache, model=model, tokens=PROMPT)
    rewrite(path, {"0.2": cache[0].freqs * 2})
    with pytest.raises(PromptCacheError, match="layer 0"):
        mlxmodels.load_prompt_cache(path, model)
