"""Continuous batching over the paged cache: greedy output per prompt equals decoding it alone; sequences join
when there is room, leave on a stop token or their budget (freeing their blocks), and are preempted and resumed
when the pool runs out."""

import mlx.core as mx
import numpy as np
import pytest

from mlxmodels.batch import BatchGenerator, generate_batch
from mlxmodels.config import HFConfig
from mlxmodels.decoder import Decoder
from mlxmodels.families import get_adapter
from mlxmodels.generate import generate_step

BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, vocab_size=128, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0)
MODELS = {
    "mistral": dict(BASE, sliding_window=6),
    "deepseek_v3": dict(BASE, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                        n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=32,
                        qk_nope_head_dim=16, qk_rope_head_dim=32, v_head_dim=16, n_group=1, topk_group=1),
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
