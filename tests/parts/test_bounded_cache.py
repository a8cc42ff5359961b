"""max_kv_size: StreamingLLM's rolling cache equals the paper's computation (raw keys rotated at their positions in
the cache), memory stays flat over 10x the bound, and nothing changes before the bound is reached."""

import mlx.core as mx
import numpy as np
import pytest

from mlxmodels.parts.rope import default_inv_freq
from mlxmodels.parts.sink_cache import SinkKVCache
from tests.case_model import load_case


def rope_at(x, offset, start, dims, traditional, freqs):
    """x with features start..start+dims rotated at positions offset.. (MLA's rows rotate their tail)."""
    rotated = mx.fast.rope(x[..., start:], dims, traditional=traditional, base=None, scale=1.0, offset=offset,
                           freqs=freqs)
    return mx.concatenate([x[..., :start], rotated], axis=-1)


def rolling_reference(q_raw, k_raw, v_raw, keep, window, rope):
    """Query t sees the sinks 0..keep-1 and the tokens max(keep, t - window + 1)..t, every key rotated at its
    position in that list and the query at the last one: the paper's rolling cache, one query at a time."""
    outs = []
    for t in range(q_raw.shape[2]):
        idx = list(range(min(keep, t + 1))) + list(range(max(keep, t - window + 1), t + 1))
        k, q = rope(k_raw[:, :, idx], 0), rope(q_raw[:, :, t: t + 1], len(idx) - 1)
        outs.append(mx.fast.scaled_dot_product_attention(q, k, v_raw[:, :, idx], scale=0.25, mask=None))
    return mx.concatenate(outs, axis=2)


@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize("latent", [False, True])
def test_sink_cache_equals_the_rolling_reference(traditional, latent):
    """GQA heads with partial rotary (8 of 12 features), or MLA rows [latent (12) | rope (8)] shared by 4 heads,
    the latent being the values."""
    keep, window, dims = 4, 6, 8
    start, D, kv_heads = (12, 20, 1) if latent else (0, 12, 2)
    freqs = mx.array(1.0 / default_inv_freq(dims, 10000.0))
    mx.random.seed(0)
    q_raw, k_raw = mx.random.normal((1, 4, 40, D)), mx.random.normal((1, kv_heads, 40, D))
    v_raw = k_raw[..., :start] if latent else mx.random.normal((1, kv_heads, 40, D))

    def rope(x, offset):
        return rope_at(x, offset, start, dims, traditional, freqs)

    cache, outs, at = SinkKVCache(keep, window, freqs, dims, traditional, start, latent), [], 0
    for T in [3, 1, 1, 7, 1, 2, 1, 1, 9, 1, 1, 1, 5, 1, 1, 1, 1, 1, 1]:  # prefill chunks and decode steps
        q, k = rope(q_raw[:, :, at: at + T], at), rope(k_raw[:, :, at: at + T], at)
        outs.append(cache.attend(q, k, None if latent else v_raw[:, :, at: at + T], 0.25))
        at += T
        assert cache.kept <= keep + window - 1
    assert at == 40
    ref = rolling_reference(q_raw, k_raw, v_raw, keep, window, rope)
    np.testing.assert_allclose(np.array(mx.concatenate(outs, axis=2)), np.array(ref), atol=1e-5, rtol=0)


@pytest.fixture(scope="module", params=["qwen3", "gemma3", "deepseek_v3"])
def model(request, tmp_path_factory):
    return load_case(request.param, tmp_path_factory.mktemp(request.param))[0]


def test_memory_stays_flat_over_ten_times_the_bound(model):
    bound = 12
    cache = model.make_cache(max_kv_size=bound)
    model(mx.array([list(range(7))]), cache=cache)
    sizes = []
    for token in range(10 * bound):
        mx.eval(model(mx.array([[token % 200]]), cache=cache))
        sizes.append(sum(c.nbytes for c in cache))
    assert cache[0].offset == 7 + 10 * bound
    assert max(sizes) == sizes[bound]  # grows until the bound, then flat


def test_exact_until_the_bound(model):
    tokens = mx.array([list(range(3, 13))])
    bounded, full = model(tokens, cache=model.make_cache(max_kv_size=12)), model(tokens, cache=model.make_cache())
    np.testing.assert_allclose(np.array(bounded), np.array(full), atol=1e-4, rtol=0)


def test_options_that_do_not_apply_are_refused(model):
    with pytest.raises(ValueError, match="max_kv_size"):
        model.make_cache(max_kv_size=4)
    with pytest.raises(ValueError, match="max_kv_size"):
        model.make_cache(paged=True, max_kv_size=64)
