"""Rolling caches back (speculative decoding): after any mix of steps and trims, the cache answers exactly as a
fresh cache fed only the kept tokens. Sliding, chunked and latent caches included."""

import mlx.core as mx
import numpy as np
import pytest

import mlxmodels
from tests.families.test_families import BASE, CASES
from tests.oracle import build_hf


@pytest.fixture(scope="module", params=["mistral", "gemma3", "llama4", "deepseek_v3", "qwen3"])
def model(request, tmp_path_factory):
    model_type, config, _ = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    build_hf(model_type, folder, **config)
    return mlxmodels.load(folder)[0]


def test_trim_equals_never_having_seen_the_tokens(model):
    rng = np.random.default_rng(0)
    k = 4
    cache, kept = model.make_cache(rollback=k), rng.integers(0, 256, 11).tolist()
    model(mx.array([kept]), cache=cache)
    for step in range(14):  # crosses the window (8) and chunk (8) boundaries several times
        drafts = rng.integers(0, 256, k + 1).tolist()
        model(mx.array([drafts]), cache=cache)
        keep = int(rng.integers(0, k + 2))
        for c in cache:
            c.trim(k + 1 - keep)
        kept += drafts[:keep]
        assert all(c.offset == len(kept) for c in cache)
    probe = [[7, 3]]
    fresh = model.make_cache()
    model(mx.array([kept]), cache=fresh)
    np.testing.assert_allclose(np.array(model(mx.array(probe), cache=cache)),
                               np.array(model(mx.array(probe), cache=fresh)), atol=1e-4, rtol=0)


def test_trim_beyond_the_rollback_allowance_is_refused(model):
    if not any(l.attn.__class__.__name__ == "AttnSpec" and (l.attn.window or l.attn.chunk) for l in model.spec.layers):
        pytest.skip("global caches can always roll back")
    cache = model.make_cache(rollback=2)
    for _ in range(3):
        model(mx.array([list(range(9))]), cache=cache)
    with pytest.raises(ValueError, match="rollback="):
        for c in cache:
            c.trim(12)
