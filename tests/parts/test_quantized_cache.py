"""Quantized caches (make_cache(kv_bits=4|8), not paged) through whole models (dense, sliding window + softcap,
Gemma 3's sliding/global mix, learned positions, chunked, MLA), every layer kind quantized, bounded ones
(max_kv_size) too: 8-bit logits within TOL8 of float KV, 4-bit within a KL bound on a fixed prompt set; cached
decode, a speculative step and its rollback equal one quantized prefill (rows are quantized alone, so the math is
the same); kv_bits + max_kv_size keeps memory flat over 10x the bound; quantized_kv_start is float KV until the
cache holds N tokens, then the quantized held rows; state round trips (and prompt-cache files) continue as the
uninterrupted cache; options refused naming them."""

import json

import mlx.core as mx
import numpy as np
import pytest

import mlxmodels
from mlxmodels.config import HFConfig
from mlxmodels.decoder import Decoder
from mlxmodels.families import get_adapter
from mlxmodels.parts.cache import Cache, ChunkedKVCache, KVCache, RotatingKVCache
from mlxmodels.parts.quantized_cache import Quantized, pack, pack_parts, quantize_cache, unpack
from mlxmodels.prompt_cache import PromptCacheError
from tests.parts.test_paged_cache import BASE, FAMILIES, IDS, SIZES, run
from tests.parts.test_paged_quantized import GROUP, KL4, PROMPTS, TOL8, assert_same_math, log_softmax
from tests.test_prompt_cache import rewrite

# Gemma 3: two sliding-window layers, then a global one (its 5:1 period shortened to the tiny models' depth)
CASES = {**FAMILIES, "gemma3_text": dict(BASE, num_hidden_layers=3, sliding_window=6, sliding_window_pattern=3,
                                         query_pre_attn_scalar=24, rope_scaling=dict(rope_type="linear", factor=8.0))}
KL4_OF = {"gemma3_text": 1.5e-2}  # its 4-bit KL (measured 9.3e-3) is above the other families' KL4
BOUND = 16  # max_kv_size: above the windows (6) and chunks (8), so dense and MLA layers get sink caches


@pytest.fixture(scope="module", params=sorted(CASES))
def model(request):
    spec = get_adapter(request.param).spec(HFConfig(dict(CASES[request.param], model_type=request.param)))
    mx.random.seed(len(request.param))
    return Decoder(spec)


def quantized(model, bits, rollback=0, **options):
    return model.make_cache(rollback, kv_bits=bits, kv_group_size=GROUP, **options)


def nbytes(cache) -> int:
    return sum(c.nbytes for c in cache)


def same_bits(a, b) -> bool:
    """Bit-equal, so packed codes that read as NaN compare too."""
    return a.shape == b.shape and a.dtype == b.dtype and bool(mx.array_equal(a.view(mx.uint8), b.view(mx.uint8)))


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16])
def test_pack_keeps_quantize_parts(dtype):
    x = mx.random.normal((1, 2, 5, 64)).astype(dtype)
    for bits in (4, 8):
        packed = pack(x, bits, GROUP)
        assert packed.dtype == dtype and packed.shape[:3] == x.shape[:3]
        for got, want in zip(unpack(packed, bits, GROUP), mx.quantize(x, GROUP, bits)):
            assert same_bits(got, want)
        assert same_bits(pack_parts(*unpack(packed, bits, GROUP), bits, GROUP), packed)
    codes, scales, biases = mx.quantize(x, GROUP, 8)
    with pytest.raises(ValueError, match="do not fit"):
        pack_parts(codes, scales, biases, 4, GROUP)


@pytest.mark.parametrize("make", [KVCache, lambda: RotatingKVCache(8)], ids=["contiguous", "rotating"])
def test_rows_of_another_dtype_keep_the_held_codes(make):
    """A cache saved by a float16 model and continued by a float32 one (a prompt-cache file's model identity does not
    see the dtype): new rows are stored in the held rows' dtype, so the held codes are not cast as numbers."""
    k16 = mx.random.normal((1, 2, 5, 64)).astype(mx.float16)
    saved = quantize_cache(make(), 8, GROUP)
    saved.update_and_fetch(k16, k16)
    cache = type(saved).from_state(saved.state, saved.meta_state)
    keys, _ = cache.update_and_fetch(*[mx.random.normal((1, 2, 1, 64))] * 2)
    want = mx.dequantize(*mx.quantize(k16, GROUP, 8), GROUP, 8)
    assert keys.dtype == mx.float32 and keys.shape[2] == 6
    np.testing.assert_array_equal(np.array(keys[..., :5, :]), np.array(want.astype(mx.float32)))


KINDS = {"contiguous": KVCache, "rotating": lambda: RotatingKVCache(6), "rotating+slack": lambda: RotatingKVCache(6, 2),
         "chunked": lambda: ChunkedKVCache(8)}


@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_decode_on_the_codes_equals_dequantize_then_attend(kind, softcap):
    """A decode step's quantized_matmul attention, under the float class's mask, equals the float class's attention
    over the dequantized rows (a copy of the cache), before and after a ring fills or a chunk turns."""
    cache = quantize_cache(KINDS[kind](), 8, GROUP)
    cache.attend(mx.random.normal((1, 4, 3, 64)), *[mx.random.normal((1, 2, 3, 64))] * 2, 0.125, softcap)
    for _ in range(12):
        q, k, v = mx.random.normal((1, 4, 1, 64)), mx.random.normal((1, 2, 1, 64)), mx.random.normal((1, 2, 1, 64))
        copy = type(cache).from_state(cache.state, cache.meta_state)
        want = Cache.attend(copy, q, k, v, 0.125, softcap)  # mask, update_and_fetch (dequantized), attend
        np.testing.assert_allclose(np.array(cache.attend(q, k, v, 0.125, softcap)), np.array(want), atol=1e-5)


def test_every_layer_kind_is_quantized(model):
    for options in ({}, {"max_kv_size": BOUND}):
        cache = quantized(model, 8, **options)
        assert all(isinstance(c, Quantized) for c in cache), [type(c).__name__ for c in cache]


@pytest.mark.parametrize("max_kv_size", [None, BOUND])
def test_8bit_logits_close_to_float(model, max_kv_size):
    want = run(model, model.make_cache(max_kv_size=max_kv_size), SIZES)
    got = run(model, quantized(model, 8, max_kv_size=max_kv_size), SIZES)
    assert 0 < np.abs(got - want).max() < TOL8


def test_4bit_kl_on_prompt_set(model):
    kls = []
    for ids in PROMPTS:
        split = [len(ids) - 4] + [1] * 4
        p, q = (log_softmax(run(model, model.make_cache(kv_bits=bits, kv_group_size=GROUP), split, ids)[0]
                            .astype(np.float64)) for bits in (None, 4))
        kls.append((np.exp(p) * (p - q)).sum(-1).mean())
    assert 0 < np.mean(kls) < KL4_OF.get(model.spec.model_type, KL4)


@pytest.mark.parametrize("bits", [4, 8])
def test_decode_and_rollback_equal_prefill(model, bits):
    ids = np.random.default_rng(1).integers(0, 128, size=30)
    want = run(model, quantized(model, bits), [30], ids)
    cache = quantized(model, bits, rollback=4)
    got = [run(model, cache, [20] + [1] * 5 + [3], ids[:28])]
    run(model, cache, [2], np.array([5, 6]))  # rejected draft tokens, forgotten below
    assert [c.trim(2) for c in cache] == [2] * len(cache)
    got.append(run(model, cache, [1, 1], ids[28:]))
    assert_same_math(np.concatenate(got, axis=1), want, bits)


def test_bounded_decode_equals_prefill(model):
    """Past max_kv_size too: the sinks and window a query sees are the same quantized rows either way."""
    ids = np.random.default_rng(3).integers(0, 128, size=40)
    want = run(model, quantized(model, 8, max_kv_size=BOUND), [40], ids)
    got = run(model, quantized(model, 8, max_kv_size=BOUND), [12] + [1] * 10 + [5] + [1] * 13, ids)
    assert_same_math(got, want, 8)


def test_bounded_memory_flat_over_ten_times_the_bound(model):
    bound = 12  # 10x within gpt2's 128 learned positions
    cache, float_cache = quantized(model, 8, max_kv_size=bound), model.make_cache(max_kv_size=bound)
    sizes = []
    for token in range(10 * bound):
        for c in (cache, float_cache):
            mx.eval(model(mx.array([[token % 128]]), cache=c))
        sizes.append(nbytes(cache))
        assert sizes[-1] < nbytes(float_cache) / 2
    assert cache[0].offset == 10 * bound
    assert max(sizes) == max(sizes[: 2 * bound])  # grows until the bound (chunked: its buffer), then no more


def test_quantized_kv_start(model):
    """Float KV (the same logits) while the cache holds fewer than N tokens; the step that reaches N converts
    every held row, to what quantizing it on arrival stores; later steps attend the quantized rows."""
    start, sizes = 12, [8, 1, 1, 1, 3, 1, 1, 1, 1]  # the 3-token step reaches 14 >= 12
    ids = np.random.default_rng(4).integers(0, 128, size=sum(sizes))
    float_cache, cache = model.make_cache(), quantized(model, 8, quantized_kv_start=start)
    want_float = run(model, float_cache, sizes[:5], ids)
    got = run(model, cache, sizes[:5], ids)
    np.testing.assert_array_equal(got, want_float)
    for c, f in zip(cache, float_cache):
        assert c.quantized and c.offset == 14
        rows = [p for a in f.state if a.ndim == 4 for p in mx.quantize(a, GROUP, 8)]
        assert all(bool(mx.array_equal(a, b)) for a, b in zip(c.state, rows))
    held_float, held = nbytes(float_cache), nbytes(cache)
    assert held * 3 < held_float
    later = run(model, cache, sizes[5:], ids[14:])
    float_later = run(model, float_cache, sizes[5:], ids[14:])
    assert 0 < np.abs(later - float_later).max() < TOL8


@pytest.mark.parametrize("options", [{}, {"max_kv_size": BOUND}, {"quantized_kv_start": 40}],
                         ids=["unbounded", "bounded", "still-float"])
def test_prompt_cache_round_trip(model, options, tmp_path):
    """save_prompt_cache/load_prompt_cache (state, meta_state, from_state through a file) continue exactly as the
    uninterrupted cache, for each quantized kind, past the bound, and for a cache still float at saving."""
    ids = np.random.default_rng(2).integers(0, 128, size=28)
    want = run(model, quantized(model, 4, **options), [24] + [1] * 4, ids)[:, 24:]
    cache = quantized(model, 4, **options)
    run(model, cache, [24], ids[:24])
    mlxmodels.save_prompt_cache(tmp_path / "q.cache", cache, model=model, tokens=ids[:24].tolist())
    restored, meta = mlxmodels.load_prompt_cache(tmp_path / "q.cache", model)
    assert [type(c) for c in restored] == [type(c) for c in cache]
    assert meta["quantization"] == {"bits": "4", "group_size": str(GROUP)}
    np.testing.assert_array_equal(run(model, restored, [1] * 4, ids[24:]), want)


def wider_rows(meta, state):
    """Layer 0's parts replaced by those of rows twice as wide as the layer's (codes still no wider than a row)."""
    wide = mx.zeros((*state[0].shape[:3], 2 * state[1].shape[-1] * GROUP))
    return {f"0.{j}": part for j, part in enumerate(mx.quantize(wide, GROUP, int(meta["bits"])))}, None


DAMAGED = {
    "bits changed": lambda meta, state: (None, {"0.meta": json.dumps({**meta, "bits": "8"})}),
    "group size changed": lambda meta, state: (None, {"0.meta": json.dumps({**meta, "group_size": "128"})}),
    "bits not a KV quantization": lambda meta, state: (None, {"0.meta": json.dumps({**meta, "bits": "3"})}),
    "start not a number": lambda meta, state: (None, {"0.meta": json.dumps({**meta, "quantized_kv_start": "x"})}),
    "rows of another width": wider_rows,
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_quantized_files_are_refused_in_one_line(model, tmp_path, case):
    cache, path = quantized(model, 4), tmp_path / "q.cache"
    run(model, cache, [12])
    mlxmodels.save_prompt_cache(path, cache, model=model, tokens=IDS[:12].tolist())
    rewrite(path, *DAMAGED[case](cache[0].meta_state, cache[0].state))
    with pytest.raises(PromptCacheError) as e:
        mlxmodels.load_prompt_cache(path, model)
    assert "\n" not in str(e.value) and "layer 0" in str(e.value)


def test_reads_mlx_lm_quantized_prompt_cache(tmp_path):
    """mlx-lm's QuantizedKVCache (mlx_lm.cache_prompt --kv-bits; mlx-lm quantizes no other kind) filled with our
    quantized run's keys and values as mlx-lm fills it (chunks into a padded buffer), saved by mlx-lm, read by us:
    the continuation equals ours."""
    pytest.importorskip("mlx_lm")
    from mlx_lm.models import cache as lm

    model, ids = Decoder(get_adapter("llama").spec(HFConfig(dict(CASES["llama"], model_type="llama")))), IDS[:24]
    ours = quantized(model, 4)
    fed = [[] for _ in ours]
    for c, log in zip(ours, fed):  # record each layer's new keys and values as our layers hand them over
        attend = c.attend
        c.attend = lambda q, k, v, *a, attend=attend, log=log: (log.append((k, v)), attend(q, k, v, *a))[1]
    run(model, ours, [16, 1, 1, 6], ids)
    theirs = [lm.QuantizedKVCache(group_size=GROUP, bits=4) for _ in ours]
    for c, log in zip(theirs, fed):
        for k, v in log:
            c.update_and_fetch(k, v)
    lm.save_prompt_cache(str(tmp_path / "lm.safetensors"), theirs, {"model": "tiny"})
    loaded, meta = mlxmodels.load_prompt_cache(tmp_path / "lm.safetensors", model)
    assert meta["source"] == "mlx-lm" and meta["quantization"] == {"bits": "4", "group_size": str(GROUP)}
    probe = np.array([7, 3, 9])
    np.testing.assert_array_equal(run(model, loaded, [3], probe), run(model, ours, [3], probe))


def test_quantized_rows_are_smaller(model):
    cache, float_cache = quantized(model, 8), model.make_cache()
    run(model, float_cache, [9])
    run(model, cache, [9])
    pairs = [(sum(a.nbytes for a in q.state), f.state) for q, f in zip(cache, float_cache)]
    # per float32 row of D: D bytes of 8-bit codes plus a float32 scale and bias per group of 32 -> 10/32 of 4 D
    assert all(n * 32 == sum(a.nbytes for a in s) * 10 for n, s in pairs)


def test_options_refused_naming_them(model):
    with pytest.raises(ValueError, match="kv_bits"):
        model.make_cache(kv_bits=3)
    with pytest.raises(ValueError, match="kv_group_size"):
        model.make_cache(kv_bits=8, kv_group_size=48)
    for options in ({"quantized_kv_start": 8}, {"quantized_kv_start": 8, "kv_bits": 8, "paged": True},
                    {"quantized_kv_start": -1, "kv_bits": 8}):
        with pytest.raises(ValueError, match="quantized_kv_start"):
            model.make_cache(**options)
