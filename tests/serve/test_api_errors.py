"""Bad requests over raw HTTP: each gets its status and OpenAI's error body naming the parameter, and the server
goes on serving; the API key, unknown routes, a full queue."""

import pytest

USER = [{"role": "user", "content": "Hi"}]
CHAT = "/v1/chat/completions"
DONE = "/v1/completions"


def assert_error(status, body, expected_status, param=None, code=None):
    assert status == expected_status, body
    error = body["error"]
    assert error["message"] and isinstance(error["message"], str) and "Traceback" not in error["message"]
    assert error["param"] == param and error["code"] == code
    assert error["type"] == {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                             405: "invalid_request_error", 413: "invalid_request_error",
                             429: "rate_limit_error"}[expected_status]


def assert_serves(live):
    status, body = live.post(CHAT, {"messages": USER, "max_tokens": 3, "temperature": 0})
    assert status == 200 and body["usage"]["completion_tokens"] == 3


BAD_CHAT = [
    ({"messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"messages": USER, "max_tokens": -5}, "max_tokens"),
    ({"messages": USER, "max_completion_tokens": "ten"}, "max_completion_tokens"),
    ({"messages": USER, "temperature": "hot"}, "temperature"),
    ({"messages": USER, "temperature": 2.5}, "temperature"),
    ({"messages": USER, "top_p": 0}, "top_p"),
    ({"messages": USER, "top_k": -1}, "top_k"),
    ({"messages": USER, "seed": 1.5}, "seed"),
    ({"messages": USER, "frequency_penalty": 3}, "frequency_penalty"),
    ({"messages": USER, "presence_penalty": True}, "presence_penalty"),
    ({"messages": USER, "repetition_penalty": 0}, "repetition_penalty"),
    ({"messages": USER, "stop": 5}, "stop"),
    ({"messages": USER, "stop": ["ok", ""]}, "stop"),
    ({"messages": USER, "logprobs": "yes"}, "logprobs"),
    ({"messages": USER, "top_logprobs": 3}, "top_logprobs"),
    ({"messages": USER, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": USER, "stream": "true"}, "stream"),
    ({"messages": USER, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": USER, "stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ({"messages": USER, "n": 2}, "n"),
    ({"messages": USER, "logit_bias": {"5": 10}}, "logit_bias"),
    ({"messages": USER, "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": USER, "tool_choice": "required"}, "tool_choice"),
    ({"messages": USER, "frobnicate": 1}, "frobnicate"),
    ({"messages": USER, "chat_template_kwargs": ["x"]}, "chat_template_kwargs"),
    ({"max_tokens": 4}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "Hi"}]}, "messages[0].role"),
    ({"messages": USER, "tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
]


@pytest.mark.parametrize("body, param", BAD_CHAT, ids=[p for _, p in BAD_CHAT])
def test_bad_chat_fields(live, body, param):
    assert_error(*live.post(CHAT, body), 400, param)


BAD_COMPLETION = [
    ({"max_tokens": 4}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": ["one", "two"]}, "prompt"),
    ({"prompt": [1, -2]}, "prompt"),
    ({"prompt": "x", "logprobs": 30}, "logprobs"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "x", "suffix": "end"}, "suffix"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "messages": USER}, "messages"),
]


@pytest.mark.parametrize("body, param", BAD_COMPLETION, ids=[p for _, p in BAD_COMPLETION])
def test_bad_completion_fields(live, body, param):
    assert_error(*live.post(DONE, body), 400, param)


def test_malformed_bodies_and_routes(live):
    assert_error(*live.post(CHAT, b"{not json"), 400)
    assert_error(*live.post(CHAT, [1, 2]), 400)
    assert_error(*live.post(DONE, b""), 400)
    assert_error(*live.post(DONE, b"\xff\xfe"), 400)
    assert_error(*live.post(DONE, b"[" * 100000), 400)
    status, body, _ = live.request("GET", "/v1/nowhere")
    assert_error(status, body, 404)
    status, body, _ = live.request("GET", CHAT)
    assert_error(status, body, 405)
    assert_serves(live)


def test_oversized_body_is_413(live, monkeypatch):
    import app.serve.app

    monkeypatch.setattr(app.serve.app, "MAX_BODY", 4096)
    assert_error(*live.post(CHAT, {"messages": [{"role": "user", "content": "x" * 5000}]}), 413)
    assert_serves(live)


def test_unknown_model_and_too_long_prompts(live):
    assert_error(*live.post(CHAT, {"model": "gpt-9", "messages": USER}), 404, "model", "model_not_found")
    context = live.engine.context
    long_text = "word " * context
    assert_error(*live.post(CHAT, {"messages": [{"role": "user", "content": long_text}]}), 400, "messages",
                 "context_length_exceeded")
    assert_error(*live.post(DONE, {"prompt": long_text}), 400, "prompt", "context_length_exceeded")
    assert_error(*live.post(DONE, {"prompt": [live.tokenizer.max_token_id + 1]}), 400, "prompt")
    # a prompt that fits gets a reply capped to the room left, not an error
    status, body = live.post(DONE, {"prompt": "a" * (context - 3), "max_tokens": 100, "temperature": 0})
    assert status == 200 and body["usage"]["completion_tokens"] <= 3
    assert_serves(live)


def test_api_key(start_server, tiny):
    live = start_server(*tiny, api_key="s3cret")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        for method, path in (("GET", "/v1/models"), ("POST", CHAT), ("GET", "/metrics")):
            status, body, _ = live.request(method, path, {"messages": USER}, headers)
            assert_error(status, body, 401, code="invalid_api_key")
    assert live.request("GET", "/health")[0] == 200  # for load balancers and start-up scripts
    status, body = live.post(CHAT, {"messages": USER, "max_tokens": 2}, Authorization="Bearer s3cret")
    assert status == 200 and body["usage"]["completion_tokens"] == 2
    import openai

    with pytest.raises(openai.AuthenticationError):
        live.openai(api_key="wrong").models.list()
    assert [m.id for m in live.openai(api_key="s3cret").models.list()] == ["tiny"]


def test_full_queue_is_429(start_server, tiny):
    live = start_server(*tiny, max_queue=0)  # no room to wait: every request is turned away
    assert_error(*live.post(CHAT, {"messages": USER}), 429)
    assert_error(*live.post(DONE, {"prompt": "x", "stream": True}), 429)
    import openai

    with pytest.raises(openai.RateLimitError):
        live.openai().chat.completions.create(model="tiny", messages=USER)
