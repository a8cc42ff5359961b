"""Prefix caching in the block pool: keys name whole prefixes, claim shares the longest cached run, commit keys
full blocks, keyed blocks are never written in place, cached blocks are evicted least recently used first, and
through whole models (dense GQA, sliding window, MLA) a sequence that claimed a prefix gives a cold prefill's
logits."""

import mlx.core as mx
import numpy as np
import pytest

from mlxmodels.config import HFConfig
from mlxmodels.decoder import Decoder
from mlxmodels.families import get_adapter
from mlxmodels.parts.block_pool import BlockPool, PoolExhausted
from mlxmodels.parts.paged_cache import PagedKVCache
from mlxmodels.parts.prefix_index import block_key, prefix_keys
from mlxmodels.spec import AttnSpec
from tests.parts.test_paged_cache import BASE, FAMILIES

TOL = 1e-5
BS = 4


def test_keys_name_the_whole_prefix():
    assert block_key(block_key(b"", [1, 2]), [3, 4]) != block_key(block_key(b"", [9, 9]), [3, 4])
    assert block_key(b"", [1, 2]) != block_key(b"", [2, 1])
    keys = list(prefix_keys([1, 2, 3, 4, 5], 2))
    assert keys == [block_key(b"", [1, 2]), block_key(keys[0], [3, 4])], "full blocks only, chained"


def code(tokens) -> list:
    """What a model would store for each token: a function of the whole prefix up to it (as real KV is), so a
    block reused after the wrong prefix reads back wrong. Integers below 2^24: exact in float32."""
    out, h = [], 0
    for t in tokens:
        h = (h * 31 + int(t) + 1) % 1_000_003
        out.append(h)
    return out


class Pool:
    """A prefix-caching pool with two tiny KV layers storing `code(tokens)`, so contents can be read and checked."""

    def __init__(self, num_blocks: int):
        self.pool = BlockPool(num_blocks, BS, prefix_cache=True)
        self.layers = [PagedKVCache(self.pool, AttnSpec(1, 1, 1)) for _ in range(2)]

    def write(self, sid: int, tokens) -> None:
        """Store `tokens` after the sequence's committed ones (its whole history: tests commit every write)."""
        self.pool.active = [sid]
        before = self.pool.seqs[sid].tokens
        k = mx.array(code(before + list(tokens))[len(before):], mx.float32).reshape(1, 1, -1, 1)
        for layer in self.layers:
            layer.attend(mx.zeros((1, 1, len(tokens), 1)), k, k, 1.0)
        self.pool.commit_tokens(sid, tokens)

    def holds(self, sid: int, tokens) -> bool:
        """Whether the sequence's blocks hold exactly `tokens`, read back from every layer."""
        s = self.pool.seqs[sid]
        blocks = mx.array(s.blocks, mx.int32)
        rows = [np.array(layer.keys[blocks]).reshape(-1)[:s.length].astype(int).tolist() for layer in self.layers]
        return rows[0] == rows[1] == code(tokens)

    def new(self, tokens, prefill: bool = True):
        """A sequence started from the cache, its prompt's rest written; -> (sid, tokens reused)."""
        sid = self.pool.add_sequence()
        n = self.pool.claim_prefix(sid, tokens)
        if prefill:
            self.write(sid, tokens[n:])
        return sid, n


PROMPT = list(range(10, 20))  # 10 tokens: two full blocks and a half


def test_claim_shares_the_longest_cached_run_of_blocks():
    p = Pool(8)
    pool = p.pool
    a, n = p.new(PROMPT)
    assert n == 0 and pool.prefix_queries == 1 and pool.prefix_hit_tokens == 0
    b, n = p.new(PROMPT[:9] + [99, 98])
    assert n == 8 and pool.seqs[b].blocks[:2] == pool.seqs[a].blocks[:2]
    assert p.holds(b, PROMPT[:9] + [99, 98]) and p.holds(a, PROMPT)
    assert pool.used_blocks == 3 + 1, "b took only its third block"
    c, n = p.new([10, 11, 12, 0, 14, 15])
    assert n == 0, "the first block differs: nothing after it can match"
    assert (pool.prefix_queries, pool.prefix_query_tokens, pool.prefix_hit_tokens) == (3, 10 + 11 + 6, 8)
    with pytest.raises(ValueError, match="new, empty sequence"):
        pool.claim_prefix(a, PROMPT)
    with pytest.raises(ValueError, match="commit after the step"):
        pool.commit_tokens(c, [1])


def test_the_last_token_is_never_reused():
    """A prompt of whole cached blocks reuses all but its last token; writing that token into the shared last block
    copies it, leaving the cached block as it was."""
    p = Pool(8)
    pool = p.pool
    a, _ = p.new(PROMPT[:8])
    b, n = p.new(PROMPT[:8])
    assert n == 7 and pool.seqs[b].blocks[1] != pool.seqs[a].blocks[1], "copied on write"
    assert p.holds(a, PROMPT[:8]) and p.holds(b, PROMPT[:8])
    one = pool.add_sequence()
    assert pool.claim_prefix(one, [5]) == 0 and pool.length(one) == 0


def test_prefix_cache_off_changes_nothing():
    pool = BlockPool(4, BS)
    sid = pool.add_sequence()
    assert pool.claim_prefix(sid, PROMPT) == 0 and pool.prefix_queries == 0
    pool.commit_tokens(sid, PROMPT)  # nothing stored, and nothing checked: off means off
    assert pool.cached_blocks == 0 and pool.seqs[sid].tokens == []


def test_a_keyed_block_is_never_written_in_place():
    p = Pool(10)
    pool = p.pool
    a, _ = p.new(PROMPT)
    b = pool.fork(a)
    pool.truncate(b, 6)  # into a's keyed second block, which b shares: b writes into a copy
    p.write(b, [70, 71])
    assert p.holds(a, PROMPT) and p.holds(b, PROMPT[:6] + [70, 71])
    pool.free(b)
    pool.truncate(a, 5)  # a alone holds that block now: writing drops its key instead
    p.write(a, [80, 81, 82])
    assert p.holds(a, PROMPT[:5] + [80, 81, 82])
    c, n = p.new(PROMPT)
    assert n == 4 and p.holds(c, PROMPT), "the old second block is no longer claimable"
    d, n = p.new(PROMPT[:5] + [80, 81, 82, 7])
    assert n == 8, "a's rewritten block was keyed again by its commit"
    assert p.holds(d, PROMPT[:5] + [80, 81, 82, 7])


def test_cached_blocks_are_evicted_least_recently_used_first():
    p = Pool(6)
    pool = p.pool
    first, second = list(range(100, 108)), list(range(200, 208))
    for tokens in (first, second):
        sid, _ = p.new(tokens)
        pool.free(sid)
    assert (pool.cached_blocks, pool.free_blocks, pool.used_blocks) == (4, 6, 0)
    sid, n = p.new(first + [1])  # reclaiming `first` makes it the most recently used
    assert n == 8 and pool.cached_blocks == 2
    pool.free(sid)  # its third block was never full, so never keyed: back with the blank ones
    assert pool.cached_blocks == 4 and pool.free_blocks == 6
    big, _ = p.new(list(range(300, 312)))  # 3 blocks: 2 blank, then `second`'s last block (freed last-first)
    assert pool.cached_blocks == 3
    for tokens, want in ((second, 4), (first, 7)):
        sid, n = p.new(tokens, prefill=False)
        assert n == want
        pool.free(sid)
    pool.free(big)
    assert (pool.used_blocks, pool.free_blocks) == (0, 6)
    assert not any(pool._refs), "every reference count back to zero"


def test_exhaustion_counts_cached_blocks_as_free():
    p = Pool(3)
    sid, _ = p.new(PROMPT[:8])
    p.pool.free(sid)
    sid, _ = p.new(list(range(50, 62)))  # needs all 3: 1 blank, then both cached blocks evicted
    assert p.pool.cached_blocks == 0 and p.holds(sid, list(range(50, 62)))


def test_random_operations_never_corrupt_a_sequence():
    """Sequences claim, extend, fork, roll back and leave at random in a short pool, with prompts that share
    prefixes; every live sequence always reads back exactly its tokens, and references add up."""
    rng = np.random.default_rng(7)
    p = Pool(12)
    pool = p.pool
    stems = [rng.integers(0, 50, 9).tolist() for _ in range(3)]
    live = {}  # sid -> the tokens it must hold
    for _ in range(300):
        op = rng.integers(0, 5)
        try:
            if op == 0 or not live:
                own = rng.integers(0, 50, rng.integers(0, 3)).tolist()
                tokens = stems[rng.integers(0, 3)][:rng.integers(1, 10)] + own
                sid = pool.add_sequence()
                n = pool.claim_prefix(sid, tokens)
                live[sid] = tokens[:n]
                p.write(sid, tokens[n:])
                live[sid] = tokens
            elif op == 1:
                sid = list(live)[rng.integers(0, len(live))]
                extra = rng.integers(0, 50, rng.integers(1, 4)).tolist()
                p.write(sid, extra)
                live[sid] = live[sid] + extra
            elif op == 2:
                sid = list(live)[rng.integers(0, len(live))]
                new = pool.fork(sid)
                live[new] = list(live[sid])
            elif op == 3:
                sid = list(live)[rng.integers(0, len(live))]
                keep = int(rng.integers(0, len(live[sid]) + 1))
                pool.truncate(sid, keep)
                live[sid] = live[sid][:keep]
            else:
                sid = list(live)[rng.integers(0, len(live))]
                pool.free(sid)
                del live[sid]
        except PoolExhausted:
            pass  # nothing was written: the sequence keeps what it had
        for sid, tokens in live.items():
            assert p.holds(sid, tokens)
        held = sum(len(pool.seqs[sid].blocks) for sid in live)
        assert sum(pool._refs) == held and pool.used_blocks == len({b for sid in live for b in pool.seqs[sid].blocks})
    assert pool.prefix_hit_tokens > 0
    for sid in list(live):
        pool.free(sid)
    assert (pool.used_blocks, pool.free_blocks, sum(pool._refs)) == (0, 12, 0)


# ---- through models: a claimed prefix gives the logits of a cold prefill (float32)

MODELS = {
    "llama": FAMILIES["llama"],  # dense GQA
    "gemma3_text": dict(BASE, num_hidden_layers=6, sliding_window=6, query_pre_attn_scalar=24),  # window < prefix
    "deepseek_v3": FAMILIES["deepseek_v3"],  # MLA latent blocks
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    spec = get_adapter(request.param).spec(HFConfig(dict(MODELS[request.param], model_type=request.param)))
    mx.random.seed(len(request.param))
    return Decoder(spec)


IDS = np.random.default_rng(0).integers(0, 128, size=40).tolist()


def cold(model, tokens) -> np.ndarray:
    return np.array(model(mx.array([tokens]), cache=model.make_cache()))[0]  # (T, V)


def prefill(model, cache, sid, tokens) -> np.ndarray:
    cache.pool.active = [sid]
    out = np.array(model(mx.array([tokens]), cache=cache))[0]
    cache.pool.commit_tokens(sid, tokens)
    return out


def assert_claimed_equals_cold(model, cache, tokens, reused: int, decode=()):
    """Claim `tokens` (expecting `reused` of them cached), prefill the rest and decode `decode`; the logits of every
    new position equal a cold prefill of the whole stream."""
    pool = cache.pool
    sid = pool.add_sequence()
    assert pool.claim_prefix(sid, tokens) == reused
    got = [prefill(model, cache, sid, tokens[reused:])[-1]] + [prefill(model, cache, sid, [t])[0] for t in decode]
    want = cold(model, tokens + list(decode))[len(tokens) - 1:]
    np.testing.assert_allclose(np.stack(got), want, atol=TOL, rtol=0)
    return sid


def test_claimed_prefix_gives_cold_logits(model):
    cache = model.make_cache(paged=True, num_blocks=40, block_size=BS, prefix_cache=True)
    pool = cache.pool
    pool.free(pool.active[0])
    a = pool.add_sequence()
    prefill(model, cache, a, IDS[:30])
    pool.free(a)  # its 7 full blocks stay cached
    b = assert_claimed_equals_cold(model, cache, IDS[:22] + IDS[30:38], 20, decode=IDS[5:8])
    c = assert_claimed_equals_cold(model, cache, IDS[:24], 23, decode=IDS[8:10])  # whole blocks: last one rewritten
    d = assert_claimed_equals_cold(model, cache, IDS[:22] + IDS[30:38] + IDS[5:8] + IDS[:2], 32)  # b's, shared
    held = {b: IDS[:22] + IDS[30:38] + IDS[5:8], c: IDS[:24] + IDS[8:10], d: IDS[:22] + IDS[30:38] + IDS[5:8] + IDS[:2]}
    pool.active = [b, c, d]  # one batched decode step over tables that share blocks, at three positions
    nxt = IDS[10:13]
    got = np.array(model(mx.array(nxt)[:, None], cache=cache))[:, 0]  # (3, V)
    for row, (sid, tokens) in enumerate(held.items()):
        np.testing.assert_allclose(got[row], cold(model, tokens + [nxt[row]])[-1], atol=TOL, rtol=0)
    for sid in (b, c, d):
        pool.free(sid)
    assert pool.used_blocks == 0 and pool.free_blocks == pool.num_blocks
