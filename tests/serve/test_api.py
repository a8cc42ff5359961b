"""The endpoints through the official openai client: each reply equals what the engine gives the same prompt and
sampling settings directly, streamed or whole; usage, logprobs, stop strings, seeds and the prefix cache's counts."""

import math

import openai
import pytest

from app.serve.chat import chat_prompt
from mlxmodels.serve import SamplingParams

CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colours."}]


def engine_reply(live, ids, max_tokens, **sampling):
    """(token ids, text) the engine gives alone: what the API must return."""
    params = SamplingParams(max_tokens, stop_tokens=frozenset(live.tokenizer.eos_token_ids), **sampling)
    tokens = [e.token for e in live.engine.submit(ids, params) if e.token >= 0]
    return tokens, live.tokenizer.decode(tokens)


def chat_ids(live, messages=CHAT):
    return chat_prompt(live.tokenizer, messages, None, {})[0]


def test_models_and_health(live):
    client = live.openai()
    assert [m.id for m in client.models.list()] == ["tiny"] and client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")
    assert live.request("GET", "/health")[:2] == (200, {"status": "ok"})


def test_chat_whole_and_streamed(live):
    client = live.openai()
    tokens, text = engine_reply(live, chat_ids(live), 12, temperature=0.0)
    whole = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, temperature=0)
    assert whole.choices[0].message.content == text and whole.choices[0].message.role == "assistant"
    assert whole.choices[0].finish_reason == ("length" if len(tokens) == 12 else "stop")
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(chat_ids(live)), len(tokens))
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(client.chat.completions.create(model="tiny", messages=CHAT, max_completion_tokens=12,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(tokens)
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")


def test_completions_text_and_token_ids(live):
    client = live.openai()
    ids = live.tokenizer.encode("Once upon a time")
    _, text = engine_reply(live, ids, 10, temperature=0.0)
    whole = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=10, temperature=0)
    assert whole.choices[0].text == text and whole.object == "text_completion"
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=10, temperature=0)
    assert by_ids.choices[0].text == text and by_ids.usage.prompt_tokens == len(ids)
    streamed = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=10, temperature=0,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text


def test_sampling_settings_reach_the_engine(live):
    """A seeded, penalised, filtered request gives the engine's own reply for those settings, every time."""
    settings = dict(temperature=0.9, top_p=0.8, seed=7, frequency_penalty=0.5, presence_penalty=0.3)
    _, text = engine_reply(live, chat_ids(live), 16, **settings)
    client = live.openai()
    for _ in range(2):
        out = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=16, **settings)
        assert out.choices[0].message.content == text
    _, ours = engine_reply(live, chat_ids(live), 16, temperature=0.0, repetition_penalty=1.3)
    out = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=16, temperature=0,
                                         extra_body={"repetition_penalty": 1.3, "top_k": 5})
    assert out.choices[0].message.content == ours  # top_k 5 leaves greedy as it is


def test_stop_strings(live):
    client = live.openai()
    _, full = engine_reply(live, chat_ids(live), 24, temperature=0.0)
    stop = full[len(full) // 2:len(full) // 2 + 2]
    for stops in (stop, [stop, "never there"]):
        out = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=24, temperature=0, stop=stops)
        assert out.choices[0].message.content == full[:full.find(stop)]
        assert out.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=24, temperature=0, stop=stop,
                                              stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full[:full.find(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"
    live.wait_idle()  # the stream cut by the stop string was cancelled in the engine


def test_chat_logprobs(live):
    tokens, _ = engine_reply(live, chat_ids(live), 8, temperature=0.0)
    out = live.openai().chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, temperature=0,
                                                logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert [c.token for c in content] == [live.tokenizer.decode([t]) for t in tokens]
    for c in content:
        assert len(c.top_logprobs) == 3 and c.bytes == list(c.token.encode())
        assert c.top_logprobs[0].token == c.token and c.top_logprobs[0].logprob == c.logprob  # greedy: the best
        assert [t.logprob for t in c.top_logprobs] == sorted((t.logprob for t in c.top_logprobs), reverse=True)
        assert c.logprob <= 0
    plain = live.openai().chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, temperature=0)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_streamed_and_whole(live):
    client = live.openai()
    whole = client.completions.create(model="tiny", prompt="abc", max_tokens=6, temperature=0, logprobs=2)
    lp = whole.choices[0].logprobs
    assert "".join(lp.tokens) == whole.choices[0].text and len(lp.token_logprobs) == 6
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:n]) for n in range(6)]
    assert all(len(top) <= 2 and max(top.values()) == p for top, p in zip(lp.top_logprobs, lp.token_logprobs))
    streamed = [c.choices[0].logprobs for c in client.completions.create(
        model="tiny", prompt="abc", max_tokens=6, temperature=0, logprobs=2, stream=True) if c.choices[0].logprobs]
    assert [p for s in streamed for p in s.token_logprobs] == pytest.approx(lp.token_logprobs)
    assert all(math.isfinite(p) for p in lp.token_logprobs)


def test_prefix_cache_counts(live):
    """The second of two chats sharing a long system prompt reuses its blocks: cached_tokens in usage, hits in
    /metrics, and the engine prefills only the rest."""
    system = {"role": "system", "content": "Rules: " + "be brief and kind. " * 8}
    client = live.openai()
    first = client.chat.completions.create(model="tiny", messages=[system, {"role": "user", "content": "One?"}],
                                           max_tokens=4, temperature=0)
    before = live.wait_idle()
    second = client.chat.completions.create(model="tiny", messages=[system, {"role": "user", "content": "Two?"}],
                                            max_tokens=4, temperature=0)
    after = live.wait_idle()
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert cached >= 16 * ((len("Rules: " + "be brief and kind. " * 8)) // 16 - 1) and cached % 16 == 0
    prefilled = after["prompt_tokens_prefilled_total"] - before["prompt_tokens_prefilled_total"]
    assert prefilled == second.usage.prompt_tokens - cached
    metrics = live.request("GET", "/metrics")[1]
    assert f"mlxm_prefix_cache_hit_tokens_total {int(after['prefix_hit_tokens'])}" in metrics
    assert after["prefix_hit_tokens"] >= cached


def test_metrics_prometheus_text(live):
    from app.serve.metrics import SERIES

    def scrape() -> dict:
        status, text, headers = live.request("GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        samples, kinds = {}, {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                kinds[name] = kind
            elif not line.startswith("# HELP "):
                name, value = line.split()
                samples[name] = float(value)
        assert set(samples) == set(kinds) == {name for name, _, _ in SERIES.values()}
        assert all(kinds[name] == "counter" for name in samples if name.endswith("_total"))
        return samples

    before = scrape()
    out = live.openai().completions.create(model="tiny", prompt="abc", max_tokens=5, temperature=0)
    live.wait_idle()
    after = scrape()
    assert after["mlxm_requests_total"] == before["mlxm_requests_total"] + 1
    assert after["mlxm_generation_tokens_total"] - before["mlxm_generation_tokens_total"] == 5
    assert after["mlxm_prompt_tokens_total"] - before["mlxm_prompt_tokens_total"] == out.usage.prompt_tokens
    assert after["mlxm_running_sequences"] == after["mlxm_kv_blocks_used"] == 0
    assert after["mlxm_kv_blocks_free"] == live.engine.stats()["kv_blocks_free"] > 0
