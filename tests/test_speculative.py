"""Speculative decoding: greedy output equals plain decoding token for token (MTP and draft-model drafters,
num_draft 1-4, random drafters so many drafts are rejected); sampled output follows the target distribution."""

import itertools
import math

import mlx.core as mx
import numpy as np
import pytest

import mlxmodels
from mlxmodels.speculative import next_draft_length
from tests import mtp_fixture
from tests.families.test_families import CASES
from tests.oracle import build_hf

PROMPT = [5, 17, 99, 3, 250, 8, 41]


@pytest.fixture(scope="module")
def mtp_model(tmp_path_factory):
    folder, _ = mtp_fixture.build(tmp_path_factory.mktemp("spec") / "dsv3")
    return mlxmodels.load(folder)[0]


def model_of(case, tmp_path_factory, seed=0, **changes):
    model_type, config, _ = CASES[case]
    folder = tmp_path_factory.mktemp(case)
    build_hf(model_type, folder, seed=seed, **dict(config, **changes))
    return mlxmodels.load(folder)[0]


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    # sliding window (8) and chunked attention (8): the rollback paths that are easy to get wrong
    return {c: model_of(c, tmp_path_factory) for c in ("mistral", "llama4")}


@pytest.fixture(scope="module")
def draft_model(tmp_path_factory):
    return model_of("qwen3", tmp_path_factory, seed=7)


def tokens(model, prompt=PROMPT, n=40, **kw):
    out = list(mlxmodels.stream_generate(model, None, prompt, max_tokens=n, **kw))
    return [r.token for r in out], out[-1]


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_mtp_greedy_equals_plain(mtp_model, k, adaptive):
    plain, _ = tokens(mtp_model)
    spec, last = tokens(mtp_model, draft="mtp", num_draft=k, adaptive_draft=adaptive)
    assert spec == plain
    assert last.draft_proposed > last.draft_accepted  # random MTP weights: drafts do get rejected
    assert last.target_forwards < len(spec)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("target", ["mistral", "llama4"])
def test_draft_model_greedy_equals_plain(targets, draft_model, target, k, adaptive):
    model = targets[target]
    plain, _ = tokens(model)
    spec, last = tokens(model, draft=draft_model, num_draft=k, adaptive_draft=adaptive)
    assert spec == plain
    assert last.draft_proposed > last.draft_accepted


def test_draft_length_follows_acceptance(targets, draft_model):
    """Rejected drafts shrink the next round's draft (to 1 at least), a fully accepted round grows it by two (to
    num_draft at most); with fixed lengths every round drafts num_draft."""
    assert [next_draft_length(k, a, p, 6) for k, a, p in [(3, 3, 3), (5, 5, 5), (3, 1, 3), (1, 0, 1)]] == [5, 6, 2, 1]
    model = targets["mistral"]
    _, fixed = tokens(model, draft=draft_model, num_draft=4, adaptive_draft=False)
    _, adaptive = tokens(model, draft=draft_model, num_draft=4)
    assert fixed.draft_proposed > 3 * fixed.target_forwards  # four a round but near the token budget
    assert adaptive.draft_proposed < 2 * adaptive.target_forwards  # a random drafter: mostly one draft a round
    _, own = tokens(model, draft=model, num_draft=4, n=41)
    assert own.draft_accepted == own.draft_proposed == 4 * own.target_forwards == 32  # all accepted: stays at 4


def test_the_target_as_its_own_drafter_accepts_everything(targets):
    model = targets["mistral"]
    spec, last = tokens(model, draft=model, num_draft=3, n=41)
    assert spec == tokens(model, n=41)[0]
    assert last.draft_accepted == last.draft_proposed and last.target_forwards == 10  # 1 + 10 * (3 + 1) tokens


@pytest.mark.parametrize("stop_after", [1, 5, 6, 7])
def test_cache_holds_exactly_the_yielded_tokens(targets, draft_model, stop_after):
    model = targets["mistral"]
    cache = model.make_cache(rollback=3)
    got, _ = tokens(model, n=stop_after, draft=draft_model, num_draft=3, cache=cache)
    assert cache[0].offset == len(PROMPT) + stop_after
    # a next turn on that cache equals decoding the whole conversation afresh
    assert tokens(model, prompt=[11], n=3, cache=cache)[0] == tokens(model, prompt=PROMPT + got + [11], n=3)[0]


def exact_distribution(model, prompt, n, temperature):
    """P(t_1..t_n) for every sequence over a tiny vocabulary, from the target's own conditionals."""
    V = model.spec.vocab_size
    probs = {}
    for seq in itertools.product(range(V), repeat=n):
        p = 1.0
        for i in range(n):
            logits = np.array(model(mx.array([prompt + list(seq[:i])]))[0, -1], dtype=np.float64) / temperature
            q = np.exp(logits - logits.max())
            p *= q[seq[i]] / q.sum()
        probs[seq] = p
    return probs


def chi2_critical(df, z=3.09):  # Wilson-Hilferty, one-sided p = 0.001
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_sampling_keeps_the_target_distribution(tmp_path_factory):
    """Vocabulary of 4, three tokens: the empirical distribution of speculative samples passes a chi-square
    goodness-of-fit test against the exact target distribution (a random draft model: many rejections)."""
    small = dict(vocab_size=4, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    target = model_of("llama3", tmp_path_factory, seed=11, **small)
    drafter = model_of("llama3", tmp_path_factory, seed=12, **small)
    prompt, T, runs = [1, 3, 0, 2], 1.3, 2500
    want = exact_distribution(target, prompt, 3, T)
    counts = dict.fromkeys(want, 0)
    proposed = accepted = 0
    for i in range(runs):
        seq, last = tokens(target, prompt=prompt, n=3, temperature=T, seed=i, draft=drafter, num_draft=2)
        counts[tuple(seq)] += 1
        proposed, accepted = proposed + last.draft_proposed, accepted + last.draft_accepted
    assert 0.1 < accepted / proposed < 0.95  # the rejection path is exercised
    cells = [(counts[s], runs * p) for s, p in want.items()]
    big = [(o, e) for o, e in cells if e >= 5]
    rest = (sum(o for o, e in cells if e < 5), sum(e for o, e in cells if e < 5))
    if rest[1] > 0:
        big.append(rest)
    chi2 = sum((o - e) ** 2 / e for o, e in big)
    assert chi2 < chi2_critical(len(big) - 1), (chi2, len(big))


def test_repetition_penalty_is_refused_with_drafts(targets, draft_model):
    with pytest.raises(ValueError, match="repetition penalty is not supported with speculative"):
        tokens(targets["mistral"], draft=draft_model, repetition_penalty=1.2)


def test_mtp_draft_needs_mtp_modules(targets):
    with pytest.raises(ValueError, match="no MTP modules"):
        tokens(targets["mistral"], draft="mtp")
