"""Generation and sampling against NumPy references, with a tiny fake model and byte tokenizer."""

import codecs

import mlx.core as mx
import numpy as np
import pytest

from mlxmodels.generate import (
    GenerationResponse,
    generate,
    generate_step,
    make_logits_processors,
    make_sampler,
    prefill,
    stream_generate,
)
from mlxmodels.sample import apply_min_p, apply_top_k, apply_top_p

EOS = 256


# ---------------------------------------------------------------- fakes


class SumCache:
    """Running sum of embeddings: the whole history matters, like a real KV cache. Has `.state`."""

    def __init__(self, dim):
        self.offset = 0
        self.total = mx.zeros((1, dim))

    @property
    def state(self):
        return [self.total]

    @property
    def nbytes(self):
        return self.total.nbytes


class SumModel:
    """h_t = sum of embeddings of every token seen; logits = (tanh(h_t) + pos[p % P]) @ head."""

    def __init__(self, vocab=64, dim=16, n_pos=8, seed=0):
        rng = np.random.default_rng(seed)
        self.emb = rng.normal(size=(vocab, dim)).astype(np.float32)
        self.pos = rng.normal(size=(n_pos, dim)).astype(np.float32)
        self.head = (2.0 * rng.normal(size=(dim, vocab))).astype(np.float32)
        self.calls = []  # (T, offset) of every forward

    def make_cache(self):
        return [SumCache(self.emb.shape[1])]

    def __call__(self, ids, cache):
        c = cache[0]
        T = ids.shape[1]
        self.calls.append((T, c.offset))
        h = c.total[:, None] + mx.cumsum(mx.array(self.emb)[ids], axis=1)  # (1, T, d)
        pos = mx.array(self.pos)[(c.offset + mx.arange(T)) % self.pos.shape[0]]  # (T, d)
        c.total = h[:, -1]
        c.offset += T
        return (mx.tanh(h) + pos) @ mx.array(self.head)  # (1, T, V)

    def np_logits(self, seq):
        """Logits after the last token of `seq` (all tokens from position 0), float64."""
        h = self.emb[np.asarray(seq)].astype(np.float64).sum(0)
        return (np.tanh(h) + self.pos[(len(seq) - 1) % self.pos.shape[0]]) @ self.head


class PlainCache:
    def __init__(self):
        self.offset = 0
        self.nbytes = 0


class ScriptModel:
    """Predicts seq[p + 1] at absolute position p (EOS past the end). Its cache has no `.state`."""

    def __init__(self, seq, vocab=258):
        table = np.full((len(seq) + 64, vocab), -5.0, np.float32)
        nxt = list(seq[1:]) + [EOS] * (table.shape[0] - len(seq) + 1)
        table[np.arange(table.shape[0]), nxt] = 5.0
        self.table = mx.array(table)

    def make_cache(self):
        return [PlainCache()]

    def __call__(self, ids, cache):
        c = cache[0]
        T = ids.shape[1]
        out = self.table[c.offset + mx.arange(T)][None]  # (1, T, V)
        c.offset += T
        return out


class ByteDetokenizer:
    def __init__(self):
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add_token(self, token):
        return self._dec.decode(bytes([token])) if token < 256 else ""

    def finalize(self):
        return self._dec.decode(b"", final=True)


class ByteTokenizer:
    eos_token_ids = {EOS}

    def encode(self, text, add_special_tokens=True):
        return list(text.encode("utf-8"))

    def detokenizer(self):
        return ByteDetokenizer()


TOK = ByteTokenizer()


def script(prompt, completion, eos=False):
    p = TOK.encode(prompt)
    return ScriptModel(p + TOK.encode(completion) + ([EOS] if eos else [])), p


def run(model, prompt, **kw):
    rs = list(stream_generate(model, TOK, prompt, **kw))
    assert all(isinstance(r, GenerationResponse) for r in rs)
    assert [r.finish_reason for r in rs[:-1]] == [None] * (len(rs) - 1)
    return rs


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def kept(x):
    return set(np.flatnonzero(np.isfinite(np.asarray(x))).tolist())


# ---------------------------------------------------------------- decoding


def test_greedy_matches_numpy_argmax_chain():
    model = SumModel()
    prompt = [3, 17, 5, 42, 8, 8, 1]
    cache = model.make_cache()
    got = [t for t, _ in generate_step(model, prompt, cache, max_tokens=12)]
    seq, want = list(prompt), []
    for _ in range(12):
        want.append(int(np.argmax(model.np_logits(seq))))
        seq.append(want[-1])
    assert got == want
    assert cache[0].offset == len(prompt) + 12  # every yielded token is in the cache, nothing more
    # Pipelining: after prefill, decode feeds one token per forward.
    assert all(T == 1 for T, _ in model.calls[-12:])


def test_logprobs_are_normalised_and_match_numpy():
    model = SumModel()
    prompt = [1, 2, 3]
    (tok, lp), = list(generate_step(model, prompt, model.make_cache(), max_tokens=1))
    ref = model.np_logits(prompt)
    np.testing.assert_allclose(np.array(lp), ref - np.log(np.exp(ref - ref.max()).sum()) - ref.max(), atol=1e-4)
    assert tok == int(np.argmax(ref))


@pytest.mark.parametrize("step", [1, 3, 512])
def test_chunked_prefill_same_tokens_and_offset(step):
    model = SumModel(seed=1)
    prompt = [int(x) for x in np.random.default_rng(2).integers(0, 64, size=10)]
    ref_cache = model.make_cache()
    ref = [t for t, _ in generate_step(model, prompt, ref_cache, max_tokens=8, prefill_step_size=10**6)]
    model.calls.clear()
    cache = model.make_cache()
    got = [t for t, _ in generate_step(model, prompt, cache, max_tokens=8, prefill_step_size=step)]
    assert got == ref
    assert cache[0].offset == ref_cache[0].offset == 18
    prompt_calls = [T for T, _ in model.calls][: -8]
    assert sum(prompt_calls) == 10 and max(prompt_calls) <= max(step, 1) and prompt_calls[-1] == 1
    # prefill alone: last-position logits equal the NumPy model, cache advanced by the whole prompt
    c = model.make_cache()
    logits = prefill(model, prompt, c, step)
    np.testing.assert_allclose(np.array(logits[0]), model.np_logits(prompt), rtol=1e-4, atol=1e-4)
    assert logits.shape == (1, 64) and c[0].offset == 10


def test_prefill_without_cache_state_and_on_a_used_cache():
    model, p = script("abcdefg", "XYZ")
    cache = model.make_cache()
    prefill(model, p[:4], cache, 2)
    logits = prefill(model, p[4:], cache, 2)  # offset 4 > 0: continues where the cache stopped
    assert cache[0].offset == 7 and int(mx.argmax(logits[0])) == ord("X")


def test_cache_reuse_equals_one_call_on_concatenated_prompt():
    model = SumModel(seed=3)
    a, b = [5, 9, 11, 2], [7, 7, 30]
    cache = model.make_cache()
    first = [t for t, _ in generate_step(model, a, cache, max_tokens=5, prefill_step_size=2)]
    assert cache[0].offset == len(a) + 5
    second = [t for t, _ in generate_step(model, b, cache, max_tokens=6, prefill_step_size=2)]
    fresh = model.make_cache()
    whole = [t for t, _ in generate_step(model, a + first + b, fresh, max_tokens=6)]
    assert second == whole and cache[0].offset == fresh[0].offset == len(a) + 5 + len(b) + 6
    # the same through stream_generate, passing only the new tokens
    cache2 = model.make_cache()
    r1 = run(model, a, max_tokens=5, cache=cache2)
    r2 = run(model, b, max_tokens=6, cache=cache2)
    assert [r.token for r in r1] == first and [r.token for r in r2] == whole


def test_repetition_penalty_greedy_chain_matches_numpy():
    model = SumModel(seed=4)
    prompt, pen, ctx = [1, 2, 3, 4, 5, 6], 1.8, 4
    procs = make_logits_processors(pen, ctx)
    got = [t for t, _ in generate_step(model, prompt, model.make_cache(), logits_processors=procs, max_tokens=10)]
    seq, want = list(prompt), []
    for _ in range(10):
        x = model.np_logits(seq)
        for t in set(seq[-ctx:]):
            x[t] = x[t] * pen if x[t] < 0 else x[t] / pen
        want.append(int(np.argmax(x)))
        seq.append(want[-1])
    assert got == want
    plain = [t for t, _ in generate_step(model, prompt, model.make_cache(), max_tokens=10)]
    assert plain != got  # the penalty changed the chain, so the test can fail


# ---------------------------------------------------------------- samplers


def test_top_k_keeps_exactly_the_k_largest():
    x = np.random.default_rng(0).normal(size=(4, 50)).astype(np.float32)
    for k in (1, 5, 49, 50, 0):
        out = np.array(apply_top_k(mx.array(x), k))
        for row, o in zip(x, out):
            want = set(np.argsort(-row)[: k if k else 50].tolist())
            assert kept(o) == want
            np.testing.assert_array_equal(o[list(want)], row[list(want)])


def test_top_p_keeps_smallest_set_reaching_p():
    x = (2.0 * np.random.default_rng(1).normal(size=(4, 50))).astype(np.float32)
    for p in (0.05, 0.3, 0.5, 0.9, 0.99, 1.0):
        out = np.array(apply_top_p(mx.array(x), p))
        for row, o in zip(x, out):
            probs = np_softmax(row.astype(np.float64))
            order = np.argsort(-probs)
            m = int(np.searchsorted(np.cumsum(probs[order]), p) + 1) if p < 1 else 50
            assert kept(o) == set(order[:m].tolist())
            mass = probs[list(kept(o))].sum()
            assert mass >= p - 1e-6 and mass - probs[order[m - 1]] < p  # reaches p; one fewer does not


def test_min_p_threshold_relative_to_max_prob():
    x = np.random.default_rng(2).normal(size=(4, 50)).astype(np.float32)
    for mp in (0.0, 0.05, 0.3, 0.9, 1.0):
        out = np.array(apply_min_p(mx.array(x), mp))
        for row, o in zip(x, out):
            probs = np_softmax(row.astype(np.float64))
            assert kept(o) == set(np.flatnonzero(probs >= mp * probs.max()).tolist())


def np_top_k(z, k):
    out = np.full_like(z, -np.inf)
    idx = np.argsort(-z)[:k]
    out[idx] = z[idx]
    return out


def np_top_p(z, p):
    probs = np_softmax(z)
    order = np.argsort(-probs)
    m = int(np.searchsorted(np.cumsum(probs[order]), p) + 1)
    out = np.full_like(z, -np.inf)
    out[order[:m]] = z[order[:m]]
    return out


def np_min_p(z, mp):
    probs = np_softmax(z)
    return np.where(probs >= mp * probs.max(), z, -np.inf)


def test_filters_compose_after_temperature_hf_order():
    """top-k, then top-p over the renormalised top-k set, then min-p, all on logits / T."""
    x = np.array([2.0, 1.9, 1.8, 1.0] + [0.0] * 12, np.float32)
    T, k, p, mp = 0.8, 4, 0.6, 0.2
    z = x.astype(np.float64) / T
    want = kept(np_min_p(np_top_p(np_top_k(z, k), p), mp))
    assert want != kept(np_min_p(np_top_k(np_top_p(z, p), k), mp))  # the order matters for this input
    lp = mx.array(x) - mx.logsumexp(mx.array(x), axis=-1, keepdims=True)
    assert kept(apply_min_p(apply_top_p(apply_top_k(lp / T, k), p), mp)) == want
    draws = np.array(make_sampler(T, top_k=k, top_p=p, min_p=mp)(mx.broadcast_to(lp[None], (4000, 16)), mx.random.key(0)))
    assert set(np.unique(draws).tolist()) == want
    # frequencies follow the renormalised surviving distribution
    q = np_softmax(np_min_p(np_top_p(np_top_k(z, k), p), mp))
    freq = np.bincount(draws, minlength=16) / len(draws)
    assert np.all(np.abs(freq - q) <= 5 * np.sqrt(q * (1 - q) / len(draws)) + 1e-12)


def test_temperature_zero_is_argmax_and_bad_args_raise():
    x = mx.array(np.random.default_rng(3).normal(size=(5, 20)).astype(np.float32))
    np.testing.assert_array_equal(np.array(make_sampler(0.0)(x)), np.argmax(np.array(x), -1))
    assert make_sampler(0.0, top_k=3)(x).dtype == mx.int32
    for bad in (dict(temperature=-1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5), dict(min_p=2.0)):
        with pytest.raises(ValueError):
            make_sampler(**{"temperature": 1.0, **bad})
    with pytest.raises(ValueError):
        make_logits_processors(0.0)


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0])
def test_empirical_distribution_matches_softmax_over_temperature(T):
    logits = np.array([1.0, 0.5, 0.0, -0.5, -1.5], np.float32)
    n = 40000
    lp = mx.array(logits) - mx.logsumexp(mx.array(logits))
    draws = np.array(make_sampler(T)(mx.broadcast_to(lp, (n, 5)), mx.random.key(7)))
    freq = np.bincount(draws, minlength=5) / n
    p = np_softmax(logits.astype(np.float64) / T)
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n)), (freq, p)
    other = np_softmax(logits.astype(np.float64) / (T * 1.5))  # a wrong temperature would fail
    assert np.any(np.abs(freq - other) > 5 * np.sqrt(other * (1 - other) / n))


def test_seeded_sampling_is_reproducible():
    model = SumModel(seed=5)
    prompt = [4, 8, 15, 16, 23, 42]

    def toks(seed, **kw):
        mx.random.seed(seed * 1000 + 1)  # global state must not matter when a seed is given
        return [r.token for r in run(model, prompt, max_tokens=24, temperature=1.5, seed=seed, **kw)]

    a, b, c = toks(11), toks(11), toks(12)
    assert a == b and a != c
    assert toks(11, top_k=5, top_p=0.9) == toks(11, top_k=5, top_p=0.9)
    greedy = [r.token for r in run(model, prompt, max_tokens=24)]
    assert a != greedy


class UniformModel:
    """Identical uniform logits at every step: only the PRNG key changes what is drawn."""

    def make_cache(self):
        return [PlainCache()]

    def __call__(self, ids, cache):
        cache[0].offset += ids.shape[1]
        return mx.zeros((1, ids.shape[1], 8))


def test_seeded_steps_draw_fresh_randomness():
    model = UniformModel()
    toks = [t for t, _ in generate_step(model, [0], model.make_cache(), make_sampler(1.0), max_tokens=800, key=mx.random.key(3))]
    freq = np.bincount(toks, minlength=8) / len(toks)
    assert np.all(np.abs(freq - 1 / 8) < 5 * np.sqrt((1 / 8) * (7 / 8) / len(toks)))


def test_repetition_penalty_processor_matches_numpy():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(1, 30)).astype(np.float32)
    history = [3, 5, 5, 7, 29, 0, 3, 12, 12]
    for pen, ctx in ((1.3, 64), (0.7, 4), (2.0, 1)):
        (proc,) = make_logits_processors(pen, ctx)
        out = np.array(proc(mx.array(history), mx.array(logits)))
        want = logits.copy()
        for t in set(history[-ctx:]):
            want[0, t] = want[0, t] * pen if want[0, t] < 0 else want[0, t] / pen
        np.testing.assert_allclose(out, want, rtol=1e-6)
    assert make_logits_processors(1.0) == []


# ---------------------------------------------------------------- text, stopping, stats


def test_eos_stops_with_finish_reason_stop():
    model, p = script("Q:", "hi", eos=True)
    cache = model.make_cache()
    rs = run(model, "Q:", max_tokens=50, cache=cache)
    assert "".join(r.text for r in rs) == "hi"
    assert rs[-1].finish_reason == "stop" and rs[-1].token == EOS and rs[-1].text == ""
    assert rs[-1].generation_tokens == 3 and cache[0].offset == len(p) + 3


def test_max_tokens_gives_length():
    model, _ = script("Q:", "abcdefghij")
    rs = run(model, "Q:", max_tokens=4)
    assert [r.text for r in rs] == list("abcd") and rs[-1].finish_reason == "length"
    assert rs[-1].generation_tokens == 4 and len(rs) == 4
    assert generate(model, TOK, "Q:", max_tokens=6) == "abcdef"


@pytest.mark.parametrize(
    "completion, stop, want, reason",
    [
        ("Hello, world! Bye", ["world"], "Hello, ", "stop"),  # spans 5 tokens
        ("ab wox world", ["world"], "ab wox ", "stop"),  # false start "wo" held, then released
        ("Hello world!", ["d!", "lo"], "Hel", "stop"),  # earliest stop wins
        ("xx wor", ["world"], "xx wor", "length"),  # held text flushed at the end
        ("héllo wörld", ["wö"], "héllo ", "stop"),  # multi-byte characters across tokens
        ("abc", ["abc"], "", "stop"),
        ("no stop here", ["zz", ""], "no stop here", "length"),
    ],
)
def test_stop_strings(completion, stop, want, reason):
    model, _ = script("P", completion, eos=False)
    rs = run(model, "P", max_tokens=len(completion.encode()), stop=stop)
    assert "".join(r.text for r in rs) == want and rs[-1].finish_reason == reason
    emitted = ""
    for r in rs:  # nothing emitted is ever taken back: every prefix is a prefix of the answer
        emitted += r.text
        assert want.startswith(emitted)


def test_split_stop_cuts_at_earliest_and_holds_possible_starts():
    from mlxmodels.generate import _split_stop

    assert _split_stop("xx d! lo", ["lo", "d!"]) == ("xx ", "", True)
    assert _split_stop("say <|e", ["<|end|>", "###"]) == ("say ", "<|e", False)
    assert _split_stop("a ## b #", ["###"]) == ("a ## b ", "#", False)
    assert _split_stop("plain", ["zz"]) == ("plain", "", False)


def test_stop_string_held_text_not_emitted_early():
    model, _ = script("P", "a<|end|>b")
    rs = run(model, "P", max_tokens=20, stop=["<|end|>"])
    assert [r.text for r in rs] == ["a", "", "", "", "", "", "", ""] and rs[-1].finish_reason == "stop"
    assert rs[-1].token == ord(">")


def test_stats_present_and_positive():
    model = SumModel()
    prompt = list(range(1, 21))
    rs = run(model, prompt, max_tokens=16)
    last = rs[-1]
    assert last.finish_reason == "length"
    assert last.prompt_tokens == 20 and last.generation_tokens == 16
    assert [r.generation_tokens for r in rs] == list(range(1, 17))
    assert last.prompt_tps > 0 and last.generation_tps > 0 and last.time_to_first_token > 0
    assert last.peak_memory > 0
    assert last.logprobs.shape == (64,)


def test_bad_inputs_raise():
    model = SumModel()
    with pytest.raises(ValueError):
        list(stream_generate(model, TOK, [], max_tokens=3))
    with pytest.raises(ValueError):
        list(stream_generate(model, TOK, [1], max_tokens=0))
    with pytest.raises(ValueError):
        prefill(model, [1, 2], model.make_cache(), 0)
    with pytest.raises(ValueError):
        list(stream_generate(model, None, "text needs a tokenizer", max_tokens=3))


def test_without_tokenizer_streams_token_ids_only():
    model = SumModel()
    rs = list(stream_generate(model, None, [3, 17, 5], max_tokens=5))
    want = [t for t, _ in generate_step(model, [3, 17, 5], model.make_cache(), max_tokens=5)]
    assert [r.token for r in rs] == want and all(r.text == "" for r in rs) and rs[-1].finish_reason == "length"


def test_prefill_evaluates_cache_state():
    from mlxmodels.generate import _cache_arrays
    from mlxmodels.parts.cache import KVCache

    c = KVCache()
    c.update_and_fetch(mx.zeros((1, 2, 3, 4)), mx.ones((1, 2, 3, 4)))
    got = _cache_arrays([c, PlainCache(), SumCache(4)])
    # a KVCache's state is the rows it holds (its buffer sliced to the offset, as saved in prompt-cache files)
    assert len(got) == 3 and got[0].shape == got[1].shape == (1, 2, 3, 4) and got[2].shape == (1, 4)
    assert mx.array_equal(got[1], c.values[..., :3, :])


def test_matches_mlx_lm_on_a_tiny_llama_with_kv_cache():
    """mlx-lm is the second oracle: same greedy tokens, with and without a repetition penalty."""
    pytest.importorskip("mlx_lm")
    from mlx.utils import tree_map
    from mlx_lm.generate import generate_step as lm_generate_step
    from mlx_lm.models import llama
    from mlx_lm.models.cache import KVCache
    from mlx_lm.sample_utils import make_logits_processors as lm_processors

    args = llama.ModelArgs(
        model_type="llama", hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=100,
    )
    mx.random.seed(0)
    model = llama.Model(args)
    model.update(tree_map(lambda w: mx.random.normal(w.shape) * 0.5 if w.ndim == 2 else w, model.parameters()))
    caches = lambda: [KVCache() for _ in model.layers]  # noqa: E731
    prompt = np.random.default_rng(8).integers(0, 100, size=37).tolist()
    for procs, lm_procs in (([], None), (make_logits_processors(1.5, 10), lm_processors(repetition_penalty=1.5, repetition_context_size=10))):
        want = [t for t, _ in lm_generate_step(mx.array(prompt), model, max_tokens=20, prefill_step_size=8,
                                               prompt_cache=caches(), logits_processors=lm_procs)]
        cache = caches()
        got = [t for t, _ in generate_step(model, prompt, cache, logits_processors=procs, max_tokens=20, prefill_step_size=8)]
        assert got == want and cache[0].offset == 57
        assert len(set(got)) > 3  # a non-degenerate chain


@pytest.mark.parametrize("step", [1, 5, 37, 512])
def test_decoder_prefill_is_one_pass_with_the_head_on_the_last_position(tmp_path, step, monkeypatch):
    import mlxmodels
    from tests.families.test_families import CASES
    from tests.oracle import build_hf

    model_type, config, _ = CASES["llama3"]
    build_hf(model_type, tmp_path, seed=4, **config)
    model = mlxmodels.load(tmp_path)[0]
    prompt = np.random.default_rng(9).integers(0, 100, size=37).tolist()
    want = np.array(model(mx.array([prompt]))[0, -1])
    body, head, fed, heads = type(model.model).__call__, model.head, [], []
    monkeypatch.setattr(type(model.model), "__call__", lambda self, ids, cache: fed.append(ids.shape[1]) or body(self, ids, cache))
    monkeypatch.setattr(model, "head", lambda h: heads.append(h.shape[1]) or head(h))
    cache = model.make_cache()
    got = prefill(model, prompt, cache, step)
    assert sum(fed) == 37 and max(fed) <= step and heads == [1]  # every token once; logits for the last only
    np.testing.assert_allclose(np.array(got[0]), want, rtol=1e-4, atol=1e-4)
    assert cache[0].offset == 37


# ---------------------------------------------------------------- prompt progress


def test_progress_follows_each_evaluated_chunk_of_a_generic_model():
    model = SumModel(seed=5)
    prompt = [int(x) for x in np.random.default_rng(6).integers(0, 64, size=10)]
    seen = []
    prefill(model, prompt, model.make_cache(), 4, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(4, 10), (8, 10), (9, 10)]  # all but the last token in chunks; the last goes with the logits
    seen.clear()
    list(stream_generate(model, None, prompt, max_tokens=2, prefill_step_size=3,
                         progress=lambda done, total: seen.append((done, total))))
    assert seen == [(3, 10), (6, 10), (9, 10)]


def test_progress_of_our_decoder_and_with_a_stop_between_chunks(tmp_path):
    import mlxmodels
    from mlxmodels.generate import Interrupted
    from tests.app.tiny import build_tiny

    model, tokenizer = mlxmodels.load(build_tiny(tmp_path))
    prompt = tokenizer.encode("a prompt of some thirty-odd tokens, fed in chunks")
    n, seen = len(prompt), []
    ref = [r.token for r in stream_generate(model, tokenizer, prompt, max_tokens=4, prefill_step_size=n)]
    got = [r.token for r in stream_generate(model, tokenizer, prompt, max_tokens=4, prefill_step_size=16,
                                            progress=lambda done, total: seen.append((done, total)))]
    assert got == ref  # reporting changes nothing it reports on
    assert seen == [(k, n) for k in range(16, n, 16)]  # the last chunk stays lazy: the first token ends it
    seen.clear()
    with pytest.raises(Interrupted):
        list(stream_generate(model, tokenizer, prompt, max_tokens=4, prefill_step_size=8,
                             progress=lambda done, total: seen.append(done), interrupt=lambda: bool(seen)))
    assert seen == [8]
