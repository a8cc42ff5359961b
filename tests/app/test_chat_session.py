"""ChatSession: the KV cache is reused across turns, rewound on regenerate/edit, rebuilt when it cannot rewind;
the oldest turns are dropped when the context overflows."""

import threading

import pytest

import mlxmodels
from app.chat_session import ChatSession, ContextError, Sampling
from app.chat_store import Chat
from tests.app.tiny import build_tiny


def session(tiny, limit=256, max_tokens=24, **chat):
    model, tok = tiny
    return ChatSession(model, tok, limit, Chat(settings=Sampling(max_tokens=max_tokens).to_dict(), **chat))


def turn(s, text=None):
    if text is not None:
        s.add_user(text)
    t = s.prepare()
    responses = list(s.reply(t))
    return t, responses


def fresh_reply(tiny, ids, max_tokens):
    model, tok = tiny
    return mlxmodels.generate(model, tok, ids, max_tokens=max_tokens)


def test_second_turn_pays_only_for_its_own_tokens(tiny):
    s = session(tiny)
    t1, r1 = turn(s, "Hello there")
    assert t1.reused == 0 and r1[-1].prompt_tokens == t1.prompt_len
    held = s.context_used
    assert held == t1.prompt_len + len(r1) == s.cache[0].offset

    t2, r2 = turn(s, "And now?")
    full2 = s.encode()[: t2.prompt_len]
    # only what follows the cached tokens (prompt 1 + reply 1) was processed
    assert t2.reused == held
    assert r2[-1].prompt_tokens == len(t2.feed) == t2.prompt_len - held
    _, tok = tiny
    new_text = "</s><|user|>And now?</s><|assistant|>"
    expected = len(tok.encode(new_text, add_special_tokens=False)) - (1 if r1[-1].token in tok.eos_token_ids else 0)
    assert r2[-1].prompt_tokens == expected
    # and the reply is what a fresh cache over the whole conversation gives
    assert s.messages[-1]["content"] == fresh_reply(tiny, full2, 24)
    assert s.cache[0].offset == s.context_used


def test_regenerate_rewinds_to_the_prompt(tiny):
    s = session(tiny)
    turn(s, "Hello there")
    first = s.messages[-1]["content"]
    s.drop_last_reply()
    t, r = turn(s)
    assert len(t.feed) == 1  # the last prompt token runs again to give the first reply token
    assert s.messages[-1]["content"] == first and len(s.messages) == 2


def test_edit_rewinds_to_the_edited_message(tiny):
    s = session(tiny)
    turn(s, "Hello there")
    turn(s, "Second question")
    s.edit(0, "Hello again")
    assert [m["role"] for m in s.messages] == ["user"]
    t, _ = turn(s)
    assert t.reused == len(s.tokenizer.encode("<|user|>Hello ", add_special_tokens=False))
    assert s.messages[-1]["content"] == fresh_reply(tiny, s.encode()[: t.prompt_len], 24)


def test_system_prompt_change_is_seen(tiny):
    s = session(tiny)
    turn(s, "Hello there")
    s.chat.system = "You are terse."
    s.drop_last_reply()
    t, _ = turn(s)
    assert t.reused == len("<|")  # "<|system|>..." now comes where "<|user|>..." was
    assert s.encode()[:t.prompt_len][:10] == s.tokenizer.encode("<|system|>", add_special_tokens=False)


def test_stop_keeps_partial_reply_and_exact_cache(tiny):
    s = session(tiny, max_tokens=200)
    s.add_user("Hello there")
    t = s.prepare()
    got = []
    for r in s.reply(t):
        got.append(r)
        if len(got) == 5:
            s.stop()
    assert len(got) == 5
    stats = s.messages[-1].pop("stats")  # a stopped reply's stats count what it had generated
    assert s.messages[-1] == {"role": "assistant", "content": "".join(r.text for r in got), "stopped": True}
    assert stats["generation_tokens"] == 5 and stats["prompt_tokens"] == t.prompt_len
    assert s.cache[0].offset == s.context_used == t.prompt_len + 5


def test_overflow_drops_oldest_turns(tiny):
    s = session(tiny, limit=96, max_tokens=16)
    dropped = 0
    for i in range(6):
        t, _ = turn(s, f"Question number {i}")
        dropped += t.dropped
        assert t.prompt_len + t.max_tokens <= 96 and s.context_used <= 96
    assert dropped > 0 and s.chat.context_start == dropped
    assert s.messages[s.chat.context_start]["role"] == "user"
    assert len(s.messages) == 12  # nothing is deleted from the chat itself
    assert s.messages[-1]["content"] == fresh_reply(tiny, s.encode()[: t.prompt_len], 16)


def test_message_longer_than_context_is_an_error(tiny):
    s = session(tiny, limit=64, max_tokens=8)
    s.add_user("x" * 100)
    with pytest.raises(ContextError, match="context holds 64"):
        s.prepare()


def test_sliding_window_cache_that_cannot_rewind_is_rebuilt(tmp_path):
    folder = build_tiny(tmp_path / "mistral", model_type="mistral", architectures=["MistralForCausalLM"],
                        sliding_window=8)
    model, tok = mlxmodels.load(folder)
    s = ChatSession(model, tok, 256, Chat(settings=Sampling(max_tokens=24).to_dict()))
    turn(s, "Hello there")
    first = s.messages[-1]["content"]
    s.drop_last_reply()
    t, _ = turn(s)  # 24 tokens back is past the 8-token window: rebuilt from the conversation
    assert t.reused == 0
    assert s.messages[-1]["content"] == first


def test_sampling_checks():
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0).check()
    for bad in ({"temperature": -1}, {"temperature": float("nan")}, {"max_tokens": 1.5}, {"top_k": True}):
        with pytest.raises(ValueError):  # a bad setting is refused, never silently replaced
            Sampling.from_dict(bad)
    assert Sampling.from_dict({"top_k": 50.0}).top_k == 50  # as generation_config.json may write it
    assert Sampling.from_dict({"temperature": 0.5, "junk": 1}).temperature == 0.5


def test_stop_while_a_long_prompt_is_fed_ends_the_turn_within_a_chunk(tiny):
    """Esc or quitting during a long prompt's prefill must not wait for the whole prompt: the session asks
    between 512-token chunks, ends the turn with no reply, and rebuilds its cache next turn."""
    s = session(tiny, limit=4096)
    s.add_user("x" * 1500)
    asked = []

    class StopPressedDuringPrefill:  # the prompt is fed first: the first time anyone asks, Esc has been pressed
        def clear(self):
            asked.clear()

        def is_set(self):
            asked.append(1)
            return True

    s._stop = StopPressedDuringPrefill()
    t = s.prepare()
    assert list(s.reply(t)) == [] and len(asked) == 1  # asked once, before chunk 2 of 3: nothing generated
    assert s.cache is None and s.messages[-1]["role"] == "user"
    s._stop = threading.Event()  # the next turn runs from a fresh cache
    t2, r2 = turn(s)
    assert t2.reused == 0 and r2


def test_interrupt_reaches_every_prefill_path(tiny):
    from mlxmodels.generate import Interrupted

    model, tok = tiny
    ids = list(range(3, 40))
    with pytest.raises(Interrupted, match="stopped after 8 of 37 prompt tokens"):
        list(mlxmodels.stream_generate(model, tok, ids, prefill_step_size=8, interrupt=lambda: True))
    with pytest.raises(Interrupted, match="stopped after 8 of 37 prompt tokens"):
        list(mlxmodels.stream_generate(model, tok, ids, prefill_step_size=8, interrupt=lambda: True,
                                       draft=model, num_draft=2))
