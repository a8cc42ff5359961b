"""Quantized contiguous caches (make_cache(kv_bits=4|8), not paged) through whole models (dense, sliding+softcap,
learned positions, chunked, MLA): 8-bit logits within TOL8 of float KV, 4-bit within a KL bound on a fixed prompt
set; cached decode, a speculative step and its rollback equal one quantized prefill (rows are quantized alone, so
the math is the same); state/meta_state/from_state give a cache that continues as the saved one; options refused
naming them."""

import mlx.core as mx
import numpy as np
import pytest

from mlxmodels.parts.quantized_cache import QuantizedKVCache, QuantizedLatentCache
from tests.parts.test_paged_cache import SIZES, model, run  # noqa: F401  (model: the fixture)
from tests.parts.test_paged_quantized import GROUP, KL4, PROMPTS, TOL8, assert_same_math, log_softmax

TOL = 1e-5  # where the math is the same
QUANTIZED = (QuantizedKVCache, QuantizedLatentCache)


def quantized(model, bits, rollback=0):
    return model.make_cache(rollback, kv_bits=bits, kv_group_size=GROUP)


def has_quantized(cache) -> bool:
    return any(isinstance(c, QUANTIZED) for c in cache)


def test_8bit_logits_close_to_float(model):
    want = run(model, model.make_cache(), SIZES)
    cache = quantized(model, 8)
    got = run(model, cache, SIZES)
    assert np.abs(got - want).max() < TOL8
    # sliding-window layers keep float caches: a model of only those is unchanged
    assert (np.abs(got - want).max() > 0) == has_quantized(cache)


def test_4bit_kl_on_prompt_set(model):
    if not has_quantized(quantized(model, 4)):
        pytest.skip("every layer is windowed: float caches")
    kls = []
    for ids in PROMPTS:
        split = [len(ids) - 4] + [1] * 4
        p, q = (log_softmax(run(model, model.make_cache(kv_bits=bits, kv_group_size=GROUP), split, ids)[0]
                            .astype(np.float64)) for bits in (None, 4))
        kls.append((np.exp(p) * (p - q)).sum(-1).mean())
    assert 0 < np.mean(kls) < KL4


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


def test_state_round_trip(model):
    """A cache rebuilt from copies of its state and meta_state (as a prompt-cache file does) continues as the
    uninterrupted one."""
    ids = np.random.default_rng(2).integers(0, 128, size=24)
    want = run(model, quantized(model, 4), [20] + [1] * 4, ids)[:, 20:]
    cache = quantized(model, 4)
    run(model, cache, [20], ids[:20])
    restored = [type(c).from_state([mx.array(np.array(a)) for a in c.state], dict(c.meta_state)) for c in cache]
    np.testing.assert_array_equal(run(model, restored, [1] * 4, ids[20:]), want)


def test_quantized_rows_are_smaller(model):
    cache = quantized(model, 8)
    if not has_quantized(cache):
        pytest.skip("every layer is windowed: float caches")
    float_cache = model.make_cache()
    run(model, float_cache, [9])
    run(model, cache, [9])
    pairs = [(sum(a.nbytes for a in q.state), f.state) for q, f in zip(cache, float_cache) if isinstance(q, QUANTIZED)]
    # per float32 row of D: D bytes of 8-bit codes plus a float32 scale and bias per group of 32 -> 10/32 of 4 D
    assert all(n * 32 == sum(a.nbytes for a in s) * 10 for n, s in pairs)


def test_options_refused_naming_them(model):
    with pytest.raises(ValueError, match="kv_bits"):
        model.make_cache(kv_bits=3)
    with pytest.raises(ValueError, match="kv_group_size"):
        model.make_cache(kv_bits=8, kv_group_size=48)
    with pytest.raises(ValueError, match="max_kv_size"):
        model.make_cache(kv_bits=8, kv_group_size=GROUP, max_kv_size=16)
