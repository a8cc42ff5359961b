"""The paged KV cache: block accounting (append, fork with copy on write, truncate, free, exhaustion) and, through
whole models, logits equal to the contiguous caches' for dense, sliding-window, softcapped, learned-position,
chunked and MLA models, alone and batched at different positions."""

import mlx.core as mx
import numpy as np
import pytest

import mlxmodels
from mlxmodels.config import HFConfig
from mlxmodels.decoder import Decoder
from mlxmodels.families import get_adapter
from mlxmodels.parts.paged_cache import BlockPool, PagedKVCache, PoolExhausted
from mlxmodels.spec import AttnSpec

TOL = 1e-5
BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, vocab_size=128, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0)
FAMILIES = {
    "llama": BASE,
    "mistral": dict(BASE, sliding_window=6),  # sliding window on every layer
    "gemma2": dict(BASE, num_hidden_layers=3, sliding_window=6, query_pre_attn_scalar=24, final_logit_softcapping=3.0,
                   attn_logit_softcapping=5.0, hidden_activation="gelu_pytorch_tanh"),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=2, n_positions=128, vocab_size=128, layer_norm_epsilon=1e-5),
    "llama4_text": dict(BASE, num_hidden_layers=4, attention_chunk_size=8, num_local_experts=4, num_experts_per_tok=1,
                        intermediate_size_mlp=128, interleave_moe_layer_step=2, floor_scale=4, attn_scale=0.5,
                        use_qk_norm=True, attn_temperature_tuning=True),
    "deepseek_v3": dict(BASE, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                        n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=32,
                        qk_nope_head_dim=16, qk_rope_head_dim=32, v_head_dim=16, n_group=1, topk_group=1),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def model(request):
    spec = get_adapter(request.param).spec(HFConfig(dict(FAMILIES[request.param], model_type=request.param)))
    mx.random.seed(len(request.param))
    return Decoder(spec)


IDS = np.random.default_rng(0).integers(0, 128, size=60)


def run(model, cache, sizes, ids=IDS):
    out, start = [], 0
    for s in sizes:
        out.append(np.array(model(mx.array(ids[None, start:start + s]), cache=cache)))
        start += s
    return np.concatenate(out, axis=1)


# a long prefill (MLA's expanded path), decode, a 3-token step (speculative verification), more decode
SIZES = [20] + [1] * 14 + [3] + [1] * 6


def test_paged_equals_contiguous(model):
    want = run(model, model.make_cache(), SIZES)
    cache = model.make_cache(paged=True, num_blocks=16, block_size=4)
    np.testing.assert_allclose(run(model, cache, SIZES), want, atol=TOL, rtol=0)
    assert cache.pool.used_blocks == -(-sum(SIZES) // 4)


def prefill_alone(model, cache, sid, ids):
    cache.pool.active = [sid]
    return np.array(model(mx.array(ids[None]), cache=cache))[0, -1]


def test_batched_decode_at_different_positions(model):
    """Three sequences of different lengths decode together (then two at a time); each row's logits equal that
    sequence decoded alone with a contiguous cache."""
    lengths, steps = [5, 17, 11], 6
    streams = [np.random.default_rng(i).integers(0, 128, size=n + steps) for i, n in enumerate(lengths)]
    alone = [run(model, model.make_cache(), [n] + [1] * steps, ids)[0, n - 1:] for n, ids in zip(lengths, streams)]
    cache = model.make_cache(paged=True, num_blocks=32, block_size=4)
    pool = cache.pool
    sids = [pool.active[0], pool.add_sequence(), pool.add_sequence()]
    for sid, n, ids, want in zip(sids, lengths, streams, alone):
        np.testing.assert_allclose(prefill_alone(model, cache, sid, ids[:n]), want[0], atol=TOL, rtol=0)
    fed = [0, 0, 0]  # decode tokens each sequence has taken
    for t in range(steps):
        rows = [0, 1, 2] if t < 3 else [2, 0]  # sequence 1 leaves the batch; the order of rows changes
        pool.active = [sids[r] for r in rows]
        y = mx.array([[int(streams[r][lengths[r] + fed[r]])] for r in rows])
        got = np.array(model(y, cache=cache))[:, -1]
        for i, r in enumerate(rows):
            fed[r] += 1
            np.testing.assert_allclose(got[i], alone[r][fed[r]], atol=TOL, rtol=0)
    assert pool.length(sids[1]) == 17 + 3


def test_batched_multi_token_step():
    model = dense_model()
    streams = [np.random.default_rng(10 + i).integers(0, 128, size=n) for i, n in enumerate([9, 14])]
    cache = model.make_cache(paged=True, num_blocks=16, block_size=4)
    pool = cache.pool
    sids = [pool.active[0], pool.add_sequence()]
    for sid, ids in zip(sids, streams):
        prefill_alone(model, cache, sid, ids[:-3])
    pool.active = sids
    got = np.array(model(mx.array(np.stack([s[-3:] for s in streams])), cache=cache))  # (2, 3, V)
    for i, ids in enumerate(streams):
        np.testing.assert_allclose(got[i], run(model, model.make_cache(), [len(ids) - 3, 3], ids)[0, -3:], atol=TOL)


def dense_model():
    spec = get_adapter("llama").spec(HFConfig(dict(BASE, model_type="llama")))
    mx.random.seed(1)
    return Decoder(spec)


def test_fork_truncate_free_keep_other_sequences_intact():
    model = dense_model()
    ids = np.random.default_rng(3).integers(0, 128, size=40)
    a_tail, b_tail = ids[30:36], ids[34:40]
    cache = model.make_cache(paged=True, num_blocks=20, block_size=4)
    pool = cache.pool
    a = pool.active[0]
    run(model, cache, [30], ids)  # 30 tokens: 7 full blocks and a half-full one
    b = pool.fork(a)
    assert pool.used_blocks == 8, "a fork shares every block"
    pool.active = [b]
    got_b = run(model, cache, [1] * 6, b_tail)
    assert pool.used_blocks == 8 + 2, "b copied the shared half-full block (copy on write), then took a new one"
    pool.active = [a]
    got_a = run(model, cache, [1] * 6, a_tail)
    prefix = ids[:30]
    np.testing.assert_allclose(got_a, run(model, model.make_cache(), [30] + [1] * 6, np.r_[prefix, a_tail])[:, 30:],
                               atol=TOL)
    np.testing.assert_allclose(got_b, run(model, model.make_cache(), [30] + [1] * 6, np.r_[prefix, b_tail])[:, 30:],
                               atol=TOL)
    # roll a back into the shared prefix, decode something else; b must not notice
    pool.truncate(a, 29)
    assert pool.length(a) == 29
    got_a2 = run(model, cache, [1] * 3, ids[5:8])
    np.testing.assert_allclose(got_a2, run(model, model.make_cache(), [29, 1, 1, 1], np.r_[ids[:29], ids[5:8]])[:, 29:],
                               atol=TOL)
    pool.free(a)
    pool.active = [b]
    got_b2 = run(model, cache, [1], ids[:1])
    np.testing.assert_allclose(got_b2, run(model, model.make_cache(), [30, 6, 1], np.r_[prefix, b_tail, ids[:1]])[:, -1:],
                               atol=TOL)
    pool.free(b)
    assert pool.free_blocks == pool.num_blocks


def test_exhaustion_raises_and_writes_nothing():
    model = dense_model()
    cache = model.make_cache(paged=True, num_blocks=3, block_size=4)
    run(model, cache, [10])
    before = [np.array(a) for c in cache for a in c.state]
    with pytest.raises(PoolExhausted, match="needs 1 more blocks .* 0 of 3 are free.*num_blocks"):
        run(model, cache, [3])
    assert cache.pool.length(cache.pool.active[0]) == 10 and cache.pool.free_blocks == 0
    for old, c in zip(before, [a for c in cache for a in c.state]):
        np.testing.assert_array_equal(old, np.array(c))
    # the sequence is still usable: two more tokens fit in its last block
    got = run(model, cache, [1, 1], IDS[10:])
    np.testing.assert_allclose(got, run(model, model.make_cache(), [10, 1, 1])[:, 10:], atol=TOL)


def test_block_accounting_and_copy_on_write():
    pool = BlockPool(num_blocks=6, block_size=4)
    layers = [PagedKVCache(pool, AttnSpec(2, 1, 8)) for _ in range(2)]
    a = pool.add_sequence()
    pool.active = [a]

    def step(T, value):
        for layer in layers:
            k = mx.full((1, 1, T, 8), value)
            layer.attend(mx.zeros((1, 2, T, 8)), k, k, 1.0)

    step(6, 1.0)
    assert (pool.length(a), pool.used_blocks) == (6, 2)
    b = pool.fork(a)
    pool.active = [b]
    step(1, 2.0)  # b writes into the shared second block: copied first, in both layers
    assert pool.used_blocks == 3
    blocks_a, blocks_b = pool.seqs[a].blocks, pool.seqs[b].blocks
    assert blocks_a[0] == blocks_b[0] and blocks_a[1] != blocks_b[1]
    for layer in layers:
        np.testing.assert_array_equal(np.array(layer.keys[blocks_a[1], :3, 0, 0]), [1, 1, 0])  # untouched
        np.testing.assert_array_equal(np.array(layer.keys[blocks_b[1], :3, 0, 0]), [1, 1, 2])  # copy + b's token
    pool.truncate(b, 3)
    assert pool.used_blocks == 2 and pool.seqs[b].blocks == [blocks_a[0]]
    pool.free(a)
    assert pool.used_blocks == 1
    with pytest.raises(ValueError, match="cannot truncate"):
        pool.truncate(b, 4)
    pool.free(b)
    assert pool.free_blocks == 6


def test_trim_on_every_layer_rolls_back_once():
    model = dense_model()
    cache = model.make_cache(paged=True, num_blocks=8, block_size=4)
    run(model, cache, [12])
    assert [c.trim(3) for c in cache] == [3, 3]
    assert cache.pool.length(cache.pool.active[0]) == 9
    assert [c.trim(2) for c in cache] == [2, 2]  # a second round, with no step between, acts again
    assert cache[0].offset == 7
    got = run(model, cache, [1], IDS[7:])
    np.testing.assert_allclose(got, run(model, model.make_cache(), [7, 1])[:, 7:], atol=TOL)


def test_generate_with_a_paged_cache():
    model = dense_model()
    prompt = IDS[:9].tolist()
    want = [r.token for r in mlxmodels.stream_generate(model, None, prompt, max_tokens=20)]
    cache = model.make_cache(paged=True, num_blocks=8, block_size=4)
    got = [r.token for r in mlxmodels.stream_generate(model, None, prompt, max_tokens=20, cache=cache)]
    assert got == want
    assert cache.pool.length(cache.pool.active[0]) == 9 + 20


def test_make_cache_options():
    model = dense_model()
    with pytest.raises(TypeError, match="paged=True"):
        model.make_cache(num_blocks=4)
    cache = model.make_cache(paged=True, num_blocks=5, block_size=8)
    assert (cache.pool.num_blocks, cache.pool.block_size, len(cache)) == (5, 8, 2)


def test_speculative_decoding_rolls_the_paged_cache_back():
    """Verification steps of 4 tokens, then per-layer `trim`s of the rejected ones: greedy output is unchanged and
    the pool ends holding what a contiguous cache holds."""
    spec = get_adapter("mistral").spec(HFConfig(dict(FAMILIES["mistral"], model_type="mistral")))
    mx.random.seed(2)
    model = Decoder(spec)
    mx.random.seed(5)
    draft = Decoder(get_adapter("llama").spec(HFConfig(dict(BASE, num_hidden_layers=1, model_type="llama"))))
    prompt = IDS[:9].tolist()
    want = [r.token for r in mlxmodels.stream_generate(model, None, prompt, max_tokens=24)]
    contiguous = model.make_cache(rollback=3)
    assert [r.token for r in mlxmodels.stream_generate(model, None, prompt, max_tokens=24, draft=draft, num_draft=3,
                                                       cache=contiguous)] == want
    paged = model.make_cache(paged=True, num_blocks=16, block_size=4)
    got = [r.token for r in mlxmodels.stream_generate(model, None, prompt, max_tokens=24, draft=draft, num_draft=3,
                                                      cache=paged)]
    assert got == want
    assert paged[0].offset == contiguous[0].offset
