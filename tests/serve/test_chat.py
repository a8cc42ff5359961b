"""OpenAI chat requests -> prompts: the messages and tools an OpenAI client sends render through real chat templates
exactly as transformers' apply_chat_template renders the same chat in transformers' shape (system for developer,
text parts joined, tool-call arguments as objects); bad messages are one RequestError naming the field."""

import json

import pytest

from app.serve.chat import chat_prompt
from app.serve.errors import RequestError
from app.serve.reply import ReplyParser
from mlxmodels.tokenizer import load_tokenizer
from tests.app.tiny import save_ascii_tokenizer
from tests.oracle import save_byte_tokenizer
from tests.test_chat_templates import MODELS, TEMPLATES, WEATHER

TOOL_TEMPLATES = ["Qwen2.5-0.5B-Instruct.jinja", "Qwen3-0.6B.jinja", "Llama-3.1-8B-Instruct.jinja",
                  "Llama-3.2-3B-Instruct.jinja", "Mistral-7B-Instruct.jinja", "Mistral-Nemo-Instruct-2407.jinja"]
ARGS = {"city": "Köln", "unit": "celsius"}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time now",
                                         "parameters": {"type": "object", "properties": {}}}}


def _round_trip(openai: bool) -> list:
    """A tool round trip as an OpenAI client sends it, or as transformers' templates expect it. (The id is one
    Mistral's template takes: 9 letters or digits.)"""
    arguments = json.dumps(ARGS, ensure_ascii=False) if openai else ARGS
    call = {"id": "call12345", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    question = ([{"type": "text", "text": "Wie ist das Wetter"}, {"type": "text", "text": "in Köln?"}] if openai
                else "Wie ist das Wetter\nin Köln?")
    return [{"role": "developer" if openai else "system", "content": "You are terse."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": None if openai else "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call12345", "content": '{"temp": 21}'},
            {"role": "assistant", "content": "Es sind 21 °C.", "reasoning_content": "Tool said 21."},
            {"role": "user", "content": "Danke!"}]


def _mid_call(openai: bool) -> list:
    """A call just answered: the calling turn's reasoning is after the last question, so Qwen3 shows it."""
    turns = _round_trip(openai)[1:4]
    return turns[:1] + [{**turns[1], "reasoning": "Need the weather."} if openai else
                        {**turns[1], "reasoning_content": "Need the weather."}] + turns[2:]


# (name, OpenAI's messages, transformers' messages, tools)
CHATS = [
    ("mid call", _mid_call(True), _mid_call(False), [WEATHER]),
    ("tool round trip", _round_trip(True), _round_trip(False), [WEATHER, TIME]),
    ("tools offered", [{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Hi"}], [WEATHER]),
    ("no tools", [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}, {"role": "assistant", "content": "Yo"},
                  {"role": "user", "content": "Bye", "name": "ann"}],
     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
      {"role": "user", "content": "Bye", "name": "ann"}], None),
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """template file -> (ours, transformers'), both loaded from one saved folder."""
    from transformers import AutoTokenizer

    out = {}
    for name in TOOL_TEMPLATES:
        folder = tmp_path_factory.mktemp(name.removesuffix(".jinja"))
        fast = save_byte_tokenizer(folder)
        fast.add_special_tokens({k: v for k, v in MODELS[name].items() if v is not None})
        for k, v in MODELS[name].items():
            if v is None:
                setattr(fast, k, None)
        fast.chat_template = (TEMPLATES / name).read_text(encoding="utf-8")
        fast.save_pretrained(folder)
        out[name] = (load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder)))
    return out


@pytest.mark.parametrize("name", TOOL_TEMPLATES)
def test_openai_chats_render_as_transformers(folders, name):
    ours, theirs = folders[name]
    rendered = 0
    for chat, openai, hf, tools in CHATS:
        try:
            expected = theirs.apply_chat_template(hf, tools=tools, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # the template refuses the chat (Mistral 7B: no system, no tools): so do we
            with pytest.raises(RequestError, match="chat template cannot render") as refused:
                chat_prompt(ours, openai, tools, {})
            assert refused.value.param == "messages" and str(e).split("\n")[0][:40] in refused.value.message
            continue
        ids, text = chat_prompt(ours, openai, tools, {})
        assert text == expected, chat
        assert ids == theirs.apply_chat_template(hf, tools=tools, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False), chat
        rendered += 1
    assert rendered >= (2 if name == "Mistral-7B-Instruct.jinja" else 3)
    if name == "Qwen3-0.6B.jinja":
        assert "<think>\nNeed the weather.\n</think>" in chat_prompt(ours, _mid_call(True), [WEATHER], {})[1]


def test_tools_and_calls_reach_the_templates(folders):
    """Not only equal to transformers: the tools and the call are in the prompt, the call's arguments once encoded."""
    for name in ("Qwen3-0.6B.jinja", "Llama-3.1-8B-Instruct.jinja", "Mistral-Nemo-Instruct-2407.jinja"):
        _, text = chat_prompt(folders[name][0], _round_trip(True), [WEATHER], {})
        assert "get_weather" in text and "the city" in text, name
        assert '"city": "Köln"' in text and '\\"city\\"' not in text, name  # an object, not a string encoded again


def test_template_kwargs_reach_the_template(folders):
    ours, theirs = folders["Qwen3-0.6B.jinja"]
    chat = [{"role": "user", "content": "Hi"}]
    _, text = chat_prompt(ours, chat, None, {"enable_thinking": False})
    assert text.endswith("<think>\n\n</think>\n\n")
    assert text == theirs.apply_chat_template(chat, add_generation_prompt=True, tokenize=False, enable_thinking=False)
    assert chat_prompt(ours, chat, None, {})[1] != text


USER = {"role": "user", "content": "Hi"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize("messages, tools, kwargs, param", [
    ("Hi", None, {}, "messages"),
    ([], None, {}, "messages"),
    (["Hi"], None, {}, "messages[0]"),
    ([USER, {"role": "robot", "content": "x"}], None, {}, "messages[1].role"),
    ([{"content": "x"}], None, {}, "messages[0].role"),
    ([USER, {"role": "assistant"}], None, {}, "messages[1].content"),
    ([{"role": "user", "content": None}], None, {}, "messages[0].content"),
    ([{"role": "user", "content": 5}], None, {}, "messages[0].content"),
    ([{"role": "user", "content": [{"type": "text", "text": "a"},
                                   {"type": "image_url", "image_url": {"url": "x"}}]}], None, {},
     "messages[0].content[1]"),
    ([{"role": "user", "content": [{"type": "text"}]}], None, {}, "messages[0].content[0]"),
    ([{"role": "user", "content": "x", "name": 3}], None, {}, "messages[0].name"),
    ([USER, {"role": "assistant", "content": None, "tool_calls": {"a": 1}}], None, {}, "messages[1].tool_calls"),
    ([USER, {"role": "assistant", "tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]}], None, {},
     "messages[1].tool_calls[0].function"),
    ([USER, {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{oops"}}]}], None,
     {}, "messages[1].tool_calls[0].function.arguments"),
    ([USER, {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "[1]"}}]}], None,
     {}, "messages[1].tool_calls[0].function.arguments"),
    ([USER, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "content": "1"}], None, {},
     "messages[2].tool_call_id"),
    ([USER], {"type": "function"}, {}, "tools"),
    ([USER], [{"type": "function", "function": {"description": "x"}}], {}, "tools[0].function.name"),
    ([USER], [{"type": "code_interpreter"}], {}, "tools[0]"),
    ([USER], [{"type": "function", "function": {"name": "f", "parameters": "x"}}], {}, "tools[0].function.parameters"),
    ([USER], None, {"add_generation_prompt": False}, "chat_template_kwargs"),
])
def test_bad_requests_name_the_field(folders, messages, tools, kwargs, param):
    with pytest.raises(RequestError) as refused:
        chat_prompt(folders["Qwen3-0.6B.jinja"][0], messages, tools, kwargs)
    assert refused.value.param == param and refused.value.status == 400
    assert param.split(".")[-1].split("[")[0] in refused.value.message


def test_a_model_without_a_chat_template(tmp_path):
    save_ascii_tokenizer(tmp_path, chat_template="")
    with pytest.raises(RequestError, match="no chat template.*/v1/completions"):
        chat_prompt(load_tokenizer(tmp_path), [USER], None, {})


# what each model writes to call get_weather(city="Köln", unit="celsius")
REPLIES = {"Qwen3-0.6B.jinja": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Köln", "unit": "celsius"}}'
                               "\n</tool_call>",
           "Llama-3.1-8B-Instruct.jinja": '{"name": "get_weather", "parameters": {"city": "Köln", "unit": "celsius"}}',
           "Mistral-Nemo-Instruct-2407.jinja": '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Köln", '
                                               '"unit": "celsius"}}]'}


@pytest.mark.parametrize("name", REPLIES)
def test_parsed_calls_come_back_in_the_next_prompt(folders, name):
    """A call parsed from the model's reply, sent back by the client with its id and the tool's answer, renders as
    transformers renders it; Qwen's and Llama's templates write back exactly what the model wrote."""
    ours, theirs = folders[name]
    question = [{"role": "user", "content": "Wie ist das Wetter in Köln?"}]
    _, prompt = chat_prompt(ours, question, [WEATHER], {})
    parser = ReplyParser(ours, prompt, [], chat=True, tools=True)
    deltas = [parser.feed(t) for t in ours.encode(REPLIES[name], add_special_tokens=False)] + [parser.finish()]
    assert "".join(d.content for d in deltas) == "" and len(parser.tool_calls) == 1
    (call,) = parser.tool_calls
    answer = {"role": "tool", "tool_call_id": call["id"], "content": '{"temp": 21}'}
    _, text = chat_prompt(ours, question + [{"role": "assistant", "content": None, "tool_calls": [call]}, answer],
                          [WEATHER], {})
    sent_back = {**call, "function": {"name": "get_weather", "arguments": ARGS}}
    assert text == theirs.apply_chat_template(
        question + [{"role": "assistant", "content": "", "tool_calls": [sent_back]}, answer], tools=[WEATHER],
        add_generation_prompt=True, tokenize=False)
    if "Mistral" not in name:  # Mistral's writes the call's id in too
        assert text.startswith(prompt + REPLIES[name])
