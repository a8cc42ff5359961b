"""Tools and reasoning through the live server: the tiny model, scripted to think and then call a tool in Qwen's
<tool_call> format, answers the openai client with reasoning_content, parsed tool_calls and finish_reason
"tool_calls", whole and streamed; the call's result goes back as a tool message."""

import json

import pytest

from tests.app.pilot import ScriptedModel
from tests.app.tiny import THINK_TEMPLATE, build_tiny

# a Qwen-like template in short: the tools offered as JSON in a system turn, calls written as <tool_call> blocks
TOOLS_TEMPLATE = ("{% if tools %}<|system|><tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>"
                  "Call a tool as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call></s>{% endif %}"
                  + THINK_TEMPLATE)
REASONING = "The user wants weather."
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
SCRIPT = f"<think>{REASONING}</think>Let me check.<tool_call>{json.dumps(CALL)}</tool_call>"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    import mlxmodels

    model, tokenizer = mlxmodels.load(build_tiny(tmp_path_factory.mktemp("tools"), chat_template=TOOLS_TEMPLATE,
                                                   max_position_embeddings=1024))  # char tokens: tools are long
    return ScriptedModel((model, tokenizer), SCRIPT), tokenizer


def test_reasoning_and_tool_call_whole(start_server, scripted):
    client = start_server(*scripted, max_batch=1).openai()  # the script follows one sequence at a time
    out = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, max_tokens=200, temperature=0)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.reasoning_content == REASONING and choice.message.content == "Let me check."
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == CALL["arguments"]

    answer = ASK + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                    {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}]
    again = client.chat.completions.create(model="tiny", messages=answer, tools=TOOLS, max_tokens=200, temperature=0)
    assert again.usage.prompt_tokens > out.usage.prompt_tokens  # the call and its result are in the prompt


def test_reasoning_and_tool_call_streamed(start_server, scripted):
    client = start_server(*scripted, max_batch=1).openai()
    chunks = list(client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, max_tokens=200,
                                                 temperature=0, stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert reasoning == REASONING and "".join(d.content or "" for d in deltas) == "Let me check."
    calls = [tc for d in deltas for tc in d.tool_calls or []]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].id.startswith("call_")
    assert json.loads(calls[0].function.arguments) == CALL["arguments"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_offers_no_tools(start_server, scripted):
    client = start_server(*scripted, max_batch=1).openai()
    out = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="none",
                                         max_tokens=200, temperature=0)
    plain = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=200, temperature=0)
    assert out.usage.prompt_tokens == plain.usage.prompt_tokens  # the template was not shown the tools
    assert out.choices[0].message.tool_calls is None and out.choices[0].finish_reason == "stop"
    assert out.choices[0].message.content == "Let me check." + SCRIPT.split("Let me check.")[1]


def test_chat_template_kwargs_reach_the_template(start_server, scripted):
    client = start_server(*scripted, max_batch=1).openai()
    default = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=1, temperature=0)
    off = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=1, temperature=0,
                                         extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    # the template closes an empty reasoning block in the prompt (one token per character here)
    assert off.usage.prompt_tokens - default.usage.prompt_tokens == len("<think>\n\n</think>\n\n")
