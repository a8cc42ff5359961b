"""Continuous batching over the paged cache: greedy output per prompt equals decoding it alone; sequences join
when there is room, leave on a stop token or their budget (freeing their blocks), and are preempted and resumed
when the pool runs out."""

import mlx.core as mx
import numpy as np
import pytest

from mlxmodels.batch import BatchGenerator, generate_batch
from mlxmodels.batch_prefill import prefill_together
from mlxmodels.config import HFConfig
from mlxmodels.decoder import Decoder
from mlxmodels.families import get_adapter
from mlxmodels.generate import generate_step, prefill
from mlxmodels.row_sampling import SamplingParams

BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, vocab_size=128, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0)
MODELS = {
    "mistral": dict(BASE, sliding_window=6),
    "deepseek_v3": dict(BASE, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2,
                        moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=32,
                        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=32, v_head_dim=16, n_group=1,
                        topk_group=1),
}
PROMPTS = [np.random.default_rng(i).integers(0, 128, n).tolist() for i, n in enumerate([5, 17, 3, 30, 9, 12])]
MAX = 16


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    mx.random.seed(0)
    return Decoder(get_adapter(request.param).spec(HFConfig(dict(MODELS[request.param], model_type=request.param))))


@pytest.fixture(scope="module")
def alone(model):
    return [[t for t, _ in generate_step(model, p, model.make_cache(), max_tokens=MAX)] for p in PROMPTS]


def collect(gen):
    tokens, finish, batch_sizes = {}, {}, []
    for responses in gen:
        batch_sizes.append(len(gen.running))
        for r in responses:
            assert r.uid not in finish, "nothing after a sequence's last token"
            tokens.setdefault(r.uid, []).append(r.token)
            if r.finish_reason:
                finish[r.uid] = r.finish_reason
    return tokens, finish, batch_sizes


def test_batched_greedy_equals_decoding_alone(model, alone):
    gen = BatchGenerator(model, num_blocks=64, block_size=4, max_batch=3)
    uids = [gen.add(p, MAX) for p in PROMPTS]
    tokens, finish, sizes = collect(gen)
    assert [tokens[u] for u in uids] == alone
    assert all(finish[u] == "length" for u in uids)
    assert max(sizes) == 3 and gen.preemptions == 0
    assert gen.pool.free_blocks == gen.pool.num_blocks, "every finished sequence freed its blocks"


def test_stop_tokens_end_a_sequence_and_others_go_on(model, alone):
    stop = alone[1][4]  # the 5th token prompt 1 generates
    gen = BatchGenerator(model, num_blocks=64, block_size=4, max_batch=6, stop_tokens=[stop])
    uids = [gen.add(p, MAX) for p in PROMPTS]
    tokens, finish, _ = collect(gen)
    for u, want in zip(uids, alone):
        cut = want.index(stop) + 1 if stop in want else len(want)
        assert tokens[u] == want[:cut]
        assert finish[u] == ("stop" if stop in want else "length")
    assert finish[uids[1]] == "stop"


def test_preemption_when_the_pool_runs_out(model, alone):
    """14 blocks of 4 tokens cannot hold four growing sequences: the newest is preempted, resumed later, and
    the output is unchanged."""
    gen = BatchGenerator(model, num_blocks=14, block_size=4, max_batch=4)
    uids = [gen.add(p, MAX) for p in PROMPTS]
    tokens, _, _ = collect(gen)
    assert gen.preemptions > 0
    assert [tokens[u] for u in uids] == alone
    assert gen.pool.free_blocks == 14


def test_sequences_join_between_steps(model, alone):
    gen = BatchGenerator(model, num_blocks=64, block_size=4, max_batch=8)
    first = gen.add(PROMPTS[0], MAX)
    got = {first: []}
    for _ in range(5):
        for r in gen.step():
            got[r.uid].append(r.token)
    late = gen.add(PROMPTS[3], 4)  # joins a batch that is 5 tokens into the first sequence
    got[late] = []
    for responses in gen:
        for r in responses:
            got[r.uid].append(r.token)
    assert got[first] == alone[0] and got[late] == alone[3][:4]


def test_generate_batch_and_errors(model, alone):
    assert generate_batch(model, PROMPTS[:2], MAX, num_blocks=32, block_size=4) == alone[:2]
    gen = BatchGenerator(model, num_blocks=4, block_size=4)
    with pytest.raises(ValueError, match="needs 5 blocks but the pool has 4"):
        gen.add(list(range(17)))
    with pytest.raises(ValueError, match="non-empty prompt"):
        gen.add([])


def run_alone(model, prompt, params):
    gen = BatchGenerator(model, num_blocks=64, block_size=4, max_batch=1)
    gen.add(prompt, params=params)
    return collect_responses(gen)[0]


def collect_responses(gen):
    got = {}
    for responses in gen:
        for r in responses:
            got.setdefault(r.uid, []).append(r)
    return [got[u] for u in sorted(got)]


def test_each_request_samples_with_its_own_settings(model, alone):
    """Seeded sampling, penalties and logprobs per row: every request gets what it gets alone, and the greedy
    rows beside them are unchanged."""
    settings = [SamplingParams(MAX, temperature=0.9, top_k=20, seed=7),
                SamplingParams(MAX, temperature=0.0),
                SamplingParams(MAX, temperature=0.0, frequency_penalty=1.5, presence_penalty=0.5, logprobs=True),
                SamplingParams(MAX, temperature=1.2, top_p=0.8, seed=3, repetition_penalty=1.3, top_logprobs=4)]
    gen = BatchGenerator(model, num_blocks=64, block_size=4, max_batch=4)
    for p, s in zip(PROMPTS, settings):
        gen.add(p, params=s)
    batched = collect_responses(gen)
    assert [r.token for r in batched[1]] == alone[1]
    for p, s, got in zip(PROMPTS, settings, batched):
        solo = run_alone(model, p, s)
        assert [r.token for r in got] == [r.token for r in solo]
        np.testing.assert_allclose([r.logprob or 0 for r in got], [r.logprob or 0 for r in solo], atol=1e-4)
    assert batched[0][0].cached_tokens == 0 and batched[0][1].cached_tokens is None
    assert all(r.logprob is None for r in batched[0])


def test_penalties_and_logprobs_match_a_reference(model):
    """Frequency/presence penalties on generated tokens only; logprobs of the penalised distribution."""
    prompt, f, pr = PROMPTS[1], 1.5, 0.5

    def penalise(history, logits):
        counts = np.bincount(np.array(history)[len(prompt):].astype(np.int64), minlength=logits.shape[-1])
        return logits - mx.array(f * counts + pr * (counts > 0), logits.dtype)[None]

    want = list(generate_step(model, prompt, model.make_cache(), logits_processors=[penalise], max_tokens=MAX))
    got = run_alone(model, prompt, SamplingParams(MAX, temperature=0.0, frequency_penalty=f, presence_penalty=pr,
                                                  top_logprobs=3))
    assert [r.token for r in got] == [t for t, _ in want]
    for r, (t, lp) in zip(got, want):
        assert abs(r.logprob - lp[t].item()) < 1e-4
        top = np.argsort(-np.array(lp))[:3]
        assert [i for i, _ in r.top_logprobs] == top.tolist()
        np.testing.assert_allclose([v for _, v in r.top_logprobs], np.array(lp)[top], atol=1e-4)


def test_cancel_frees_and_the_others_go_on(model, alone):
    gen = BatchGenerator(model, num_blocks=64, block_size=4, max_batch=2)
    uids = [gen.add(p, MAX) for p in PROMPTS[:4]]
    tokens = {u: [] for u in uids}
    for _ in range(3):
        for r in gen.step():
            tokens[r.uid].append(r.token)
    assert gen.cancel(uids[0]) and gen.cancel(uids[3])  # one running, one waiting
    assert not gen.cancel(uids[0])
    for responses in gen:
        for r in responses:
            tokens[r.uid].append(r.token)
    assert tokens[uids[1]] == alone[1] and tokens[uids[2]] == alone[2] and tokens[uids[3]] == []
    assert gen.pool.free_blocks == gen.pool.num_blocks and gen.idle
    assert gen.prompt_tokens == sum(map(len, PROMPTS[:4]))
    assert gen.generated_tokens == sum(map(len, tokens.values()))


@pytest.mark.parametrize("bad, match", [(dict(top_logprobs=21), "top_logprobs"), (dict(frequency_penalty=3), "-2 to 2"),
                                        (dict(temperature=-1), "temperature"), (dict(seed=-1), "seed"),
                                        (dict(max_tokens=0), "max_tokens"), (dict(repetition_penalty=0), "repetition")])
def test_sampling_params_refuse_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**dict(dict(max_tokens=4), **bad))


def test_a_cached_prefix_is_not_recomputed(model, alone):
    """Prompts sharing a 12-token prefix: the later ones prefill only their own tail, a repeated prompt only what
    follows its last full block (its 8th block also holds the first reply's tokens), and every reply equals
    decoding alone; a prompt of 7 cached blocks reuses all but its last token, writing it into a copy."""
    prefix = PROMPTS[3][:12]
    prompts = [prefix + [5, 6, 7], prefix + [9, 9], PROMPTS[3], PROMPTS[3], PROMPTS[3][:28]]
    want = [[t for t, _ in generate_step(model, p, model.make_cache(), max_tokens=4)] for p in prompts]
    gen = BatchGenerator(model, num_blocks=64, block_size=4, max_batch=1, prefix_cache=True)
    for p in prompts:
        gen.add(p, 4)
    got = collect_responses(gen)
    assert [[r.token for r in g] for g in got] == want and want[2] == alone[3][:4]
    assert [g[0].cached_tokens for g in got] == [0, 12, 12, 28, 27]
    assert gen.prefilled_tokens == 15 + 2 + 18 + 2 + 1
    assert gen.pool.prefix_hit_tokens == 12 + 12 + 28 + 27
    assert gen.pool.used_blocks == 0 and gen.pool.cached_blocks > 0


def test_prefix_cache_under_a_short_pool(model, alone):
    """Cached blocks give way to running sequences (evicted, least recently used first) and preemption resumes
    from what is still cached: the replies do not change."""
    gen = BatchGenerator(model, num_blocks=14, block_size=4, max_batch=4, prefix_cache=True)
    uids = [gen.add(p, MAX) for p in PROMPTS + PROMPTS]
    tokens, _, _ = collect(gen)
    assert gen.preemptions > 0
    assert [tokens[u] for u in uids] == alone + alone
    assert gen.pool.used_blocks == 0 and gen.prefilled_tokens < 2 * sum(map(len, PROMPTS)) + gen.preemptions * MAX


def test_interrupt_drops_a_request_during_its_prefill(model, alone):
    asked = []

    def interrupt(uid):
        asked.append(uid)
        return uid == 1

    gen = BatchGenerator(model, num_blocks=64, block_size=4, max_batch=2, prefill_step_size=8, interrupt=interrupt)
    uids = [gen.add(p, MAX) for p in PROMPTS[2:5]]  # 3, 30 and 9 tokens
    got = collect_responses(gen)
    assert [[r.token for r in g] for g in got] == [alone[2], alone[4]]
    assert [g[0].uid for g in got] == [uids[0], uids[2]] and 1 in asked
    assert gen.pool.free_blocks == gen.pool.num_blocks and gen.idle


def test_a_prefill_budget_spreads_admission_over_steps(model, alone):
    gen = BatchGenerator(model, num_blocks=64, block_size=4, max_batch=8, prefill_budget=20)
    uids = [gen.add(p, MAX) for p in PROMPTS[1:4]]  # 17, 3 and 30 tokens
    steps = [gen.step(), gen.step()]
    assert [r.uid for r in steps[0]] == uids[:2]  # 17 + 3 reach the budget
    assert [r.uid for r in steps[1]] == uids  # the two decode, then the 30-token prompt goes alone
    tokens = {u: [] for u in uids}
    for responses in steps + list(gen):
        for r in responses:
            tokens[r.uid].append(r.token)
    assert list(tokens.values()) == alone[1:4]


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_pipelined_steps_change_nothing(model, alone, prefix_cache):
    """Queuing each decode step before reading the previous one gives the same replies through stop tokens,
    cancels, joins, sampled and penalised rows and preemption; only the order of work changes."""
    stop = alone[0][4]
    settings = [SamplingParams(MAX, temperature=0.0, stop_tokens=frozenset([stop])),
                SamplingParams(MAX, temperature=0.0), SamplingParams(MAX, temperature=0.8, seed=5, top_logprobs=2),
                SamplingParams(MAX, temperature=0.0, presence_penalty=1.0), SamplingParams(5, temperature=0.0),
                SamplingParams(MAX, temperature=0.0)]
    runs = []
    for pipeline in (False, True):
        gen = BatchGenerator(model, num_blocks=12, block_size=4, max_batch=4, pipeline=pipeline,
                             prefix_cache=prefix_cache)
        uids = [gen.add(p, params=s) for p, s in zip(PROMPTS, settings)]
        got = {u: [] for u in uids}
        for k, responses in enumerate(gen):
            for r in responses:
                got[r.uid].append((r.token, r.finish_reason, r.top_logprobs and r.top_logprobs[0][0]))
            if k == 3:
                gen.cancel(uids[5])
        runs.append((got, gen.steps_ahead, gen.preemptions))
        assert gen.pool.used_blocks == 0 and gen.idle
    (off, ahead_off, _), (on, ahead_on, preempted) = runs
    assert on == off and ahead_off == 0 and ahead_on > 0 and preempted > 0
    assert on[0][-1][:2] == (stop, "stop") and len(on[0]) <= 5 and len(on[5]) < MAX


@pytest.mark.parametrize("lengths, step_size, padding", [((17, 9, 12), 512, 2.0), ((17, 9, 12), 4, 2.0),
                                                          ((30, 3, 3), 512, 2.0), ((17, 9, 12), 512, 1.0)])
def test_prefill_together_equals_prefilling_alone(model, lengths, step_size, padding):
    """Sequences prefilled in shared rounds (padded to the longest, or paced by the shortest when padding would
    cost too much; whole or in chunks) end with their own tokens only and the logits of a prefill alone; a
    sequence dropped between rounds is not finished."""
    prompts = [(PROMPTS[3] * 2)[k: k + n] for k, n in enumerate(lengths)]
    cache = model.make_cache(paged=True, num_blocks=64, block_size=4)
    pool = cache.pool
    pool.free(pool.active[0])
    seqs = [pool.add_sequence() for _ in prompts]
    finished, logits = prefill_together(model, cache, seqs, prompts, step_size, padding=padding)
    assert finished == [0, 1, 2] and [pool.length(s) for s in seqs] == list(lengths)
    for i, row in zip(finished, logits):
        np.testing.assert_allclose(row, prefill(model, prompts[i], model.make_cache())[0], atol=1e-4)
    wrapped = [pool.add_sequence() for _ in prompts]  # a model wrapper: logits from its call, as generate.prefill
    _, again = prefill_together(lambda *a, **k: model(*a, **k), cache, wrapped, prompts, step_size, padding=padding)
    np.testing.assert_allclose(again, logits, atol=1e-5)
    more = [pool.add_sequence() for _ in prompts]
    finished, _ = prefill_together(model, cache, more, prompts, 4, keep=lambda i: i != 0)
    assert finished == [1, 2]


@pytest.mark.parametrize("round_cost, rounds", [(0, 3), (4, 1)])
def test_a_round_cost_pads_remainders_that_differ_a_little(model, round_cost, rounds):
    """Remainders 17, 15, 16 go in three rounds paced by the shortest (15, 1, 1 tokens) when padding is never
    allowed, and in one round padded to 17 (3 tokens of padding, within 4 per round saved) with a round cost;
    either way each sequence holds its own tokens and ends with the logits of a prefill alone."""
    prompts = [(PROMPTS[3] * 2)[k: k + n] for k, n in enumerate((17, 15, 16))]
    cache = model.make_cache(paged=True, num_blocks=64, block_size=4)
    pool = cache.pool
    pool.free(pool.active[0])
    seqs = [pool.add_sequence() for _ in prompts]
    passes = []

    def counted(*a, **k):
        passes.append(a[0].shape)
        return model(*a, **k)

    finished, logits = prefill_together(counted, cache, seqs, prompts, 512, padding=1.0, round_cost=round_cost)
    assert len(passes) == rounds and finished == [0, 1, 2] and [pool.length(s) for s in seqs] == [17, 15, 16]
    for i, row in zip(finished, logits):
        np.testing.assert_allclose(row, prefill(model, prompts[i], model.make_cache())[0], atol=1e-4)
