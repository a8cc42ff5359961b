"""follow_engine.py in one process (a group of one): what rank 0's engine sends decodes to the same operations, and
a follower replaying the messages makes exactly the model calls rank 0's engine made (the collectives inside them
would pair up), through admission, a cancellation, penalties (no step built ahead) and seeded sampling."""

import mlx.core as mx
import pytest

import mlxmodels
from mlxmodels.distributed import follow_engine
from mlxmodels.distributed.follow_engine import ADD, BUILD, Lead, decode, encode_add, encode_options
from mlxmodels.row_sampling import SamplingParams
from mlxmodels.serve import Engine
from tests.app.tiny import build_tiny

OPTIONS = dict(num_blocks=64, block_size=16, max_batch=3, prefix_cache=True, prefill_budget=None, kv_bits=None,
               kv_group_size=64)


def test_operations_arrive_as_sent():
    params = SamplingParams(7, temperature=0.7, top_p=0.9, top_k=5, min_p=0.05, seed=2**64 - 1,
                            frequency_penalty=-0.3, presence_penalty=1.25, repetition_penalty=1.1, logprobs=True,
                            top_logprobs=3, stop_tokens=frozenset({3, 99}))
    plain = SamplingParams(1, temperature=0.0)
    message = encode_options(OPTIONS) + encode_add([4, 5, 6], params) + encode_add([1], plain) + [3, 2, 4]
    assert list(decode(message)) == [(BUILD, OPTIONS), (ADD, [4, 5, 6], params), (ADD, [1], plain),
                                     (follow_engine.CANCEL, 2), (follow_engine.STEP,)]
    with pytest.raises(ValueError, match="operation 9"):
        list(decode([9]))


class Calls:
    """A model that records the shape of every forward pass (what a split model's collectives follow); with
    `fail_at`, that call (from 1) raises, as a step that fails on every rank alike."""

    def __init__(self, model, fail_at: int = 0):
        self.model, self.shapes, self.fail_at = model, [], fail_at

    def __call__(self, ids, *args, **kwargs):
        self.shapes.append(tuple(ids.shape))
        if len(self.shapes) == self.fail_at:
            raise ValueError("a step that fails")
        return self.model(ids, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return mlxmodels.load(build_tiny(tmp_path_factory.mktemp("tiny")))[0]


def serve(lead_model, monkeypatch) -> tuple:
    """An engine leading over a group of one, started; -> (it, the list its messages are recorded into)."""
    sent = []
    monkeypatch.setattr(follow_engine, "share_tokens", lambda group, message: sent.append(list(message)) or message)
    engine = Engine(lead_model, lead=Lead(mx.distributed.init()), context=128,
                    **{k: OPTIONS[k] for k in ("num_blocks", "max_batch")})
    engine.start()
    return engine, sent


def replay(model, sent: list, monkeypatch, **options) -> Calls:
    """A follower fed `sent`: -> its model, with the calls it made."""
    messages = iter(sent)
    monkeypatch.setattr(follow_engine, "share_tokens", lambda group, message: next(messages))
    follower = Calls(model, **options)
    failed = []
    follow_engine.follow(mx.distributed.init(), follower, lost=failed.append)
    follower.failed = failed
    return follower


def test_a_follower_replays_the_engine_call_for_call(model, monkeypatch):
    lead_model = Calls(model)
    engine, sent = serve(lead_model, monkeypatch)
    try:
        greedy = [engine.submit(p, SamplingParams(12, temperature=0.0)) for p in ([5, 6, 7], [8, 9] * 20)]
        penalised = engine.submit([10, 11, 12], SamplingParams(10, temperature=0.0, repetition_penalty=1.3))
        seeded = engine.submit([13, 14], SamplingParams(9, temperature=0.8, seed=7))
        cut = engine.submit([15, 16, 17, 18], SamplingParams(60, temperature=0.0))
        for n, _ in enumerate(cut, start=1):
            if n == 3:
                cut.cancel()
        replies = [[e.token for e in s] for s in (*greedy, penalised, seeded)]
    finally:
        engine.close()
    assert [len(r) for r in replies] == [12, 12, 10, 9] and sent[-1][-1] == follow_engine.SHUTDOWN

    follower = replay(model, sent, monkeypatch)
    assert follower.shapes == lead_model.shapes and len(lead_model.shapes) > 12 and not follower.failed


def test_a_step_that_fails_everywhere_is_replayed_and_both_go_on(model, monkeypatch):
    """Rank 0's engine ends the open request with an error and builds a new generator; the follower hears of the
    failure (`lost`, which would end it for a lost rank), then builds the same generator from the next message."""
    lead_model = Calls(model, fail_at=3)
    engine, sent = serve(lead_model, monkeypatch)
    try:
        failed = [e for e in engine.submit([5, 6, 7], SamplingParams(8, temperature=0.0))]
        after = [e.token for e in engine.submit([5, 6, 7], SamplingParams(8, temperature=0.0))]
    finally:
        engine.close()
    assert failed[-1].finish_reason == "error" and len(after) == 8
    follower = replay(model, sent, monkeypatch, fail_at=3)
    assert follower.shapes == lead_model.shapes and [str(e) for e in follower.failed] == ["a step that fails"]
