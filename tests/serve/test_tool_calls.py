"""Tool calls parsed from a reply's text as it streams: Qwen/Hermes `<tool_call>` blocks, Llama 3.1 JSON and
Mistral's `[TOOL_CALLS]`, the format picked from the template; a call that does not parse stays content; the cut of
the text changes nothing."""

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.serve.tool_calls import HermesParser, LlamaJsonParser, MistralParser, for_template

TEMPLATES = Path(__file__).parent.parent / "data" / "templates"


def ids():
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def run(parser_class, pieces) -> tuple:
    """(content, calls) of the text fed in `pieces`, then the end."""
    parser, content, calls = parser_class(ids()), "", []
    for piece in list(pieces) + [None]:
        text, new = parser.feed(piece or "", final=piece is None)
        content += text
        calls += new
    return content, calls


def call(n, name, arguments) -> dict:
    return {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": arguments}}


WEATHER = '{"name": "get_weather", "arguments": {"city": "Köln", "unit": "celsius"}}'


@pytest.mark.parametrize("text, content, calls", [
    ("No tools needed.", "No tools needed.", []),
    (" Spaces \n stay\n\n", " Spaces \n stay\n\n", []),  # no call: whitespace is content
    (f"<tool_call>{WEATHER}</tool_call>\n\nDone. ", "Done. ",
     [call(0, "get_weather", '{"city": "Köln", "unit": "celsius"}')]),
    (f"<tool_call>\n{WEATHER}\n</tool_call>", "",
     [call(0, "get_weather", '{"city": "Köln", "unit": "celsius"}')]),
    ((f"Checking.\n<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>\n"
      '{"name": "get_time", "arguments": {}}\n</tool_call>\n'), "Checking.",
     [call(0, "get_weather", '{"city": "Köln", "unit": "celsius"}'), call(1, "get_time", "{}")]),
    ('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>', "", [call(0, "f", '{"a": 1}')]),
    ('<tool_call>{"name": "f"}</tool_call>', "", [call(0, "f", "{}")]),
    # not calls: they stay the text the model wrote
    ("x\n<tool_call>{not json}</tool_call> after\n", "x\n<tool_call>{not json}</tool_call> after\n", []),
    ('<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', []),
    ('<tool_call>{"name": "f", "arguments": [1]}</tool_call>', '<tool_call>{"name": "f", "arguments": [1]}</tool_call>',
     []),
    ('<tool_call>{"name": "f", "arguments": "[1]"}</tool_call>',
     '<tool_call>{"name": "f", "arguments": "[1]"}</tool_call>', []),
    (f"<tool_call>\n{WEATHER}", f"<tool_call>\n{WEATHER}", []),  # never closed
    ("a <tool_", "a <tool_", []),  # a tag's beginning at the end is text after all
])
def test_hermes(text, content, calls):
    assert run(HermesParser, [text]) == (content, calls)
    assert run(HermesParser, list(text)) == (content, calls)


def test_hermes_streams_content_and_holds_only_what_may_be_a_call():
    parser = HermesParser(ids())
    assert parser.feed("Hi <tool") == ("Hi", [])
    assert parser.feed("s> and <tool_call>{") == (" <tools> and", [])  # the space before a call goes with it
    assert parser.feed('"name": "f"}</tool_call>\n') == ("", [call(0, "f", "{}")])
    assert parser.feed("\n  ok ") == ("ok", [])
    assert parser.feed("", final=True) == (" ", [])


@pytest.mark.parametrize("text, content, calls", [
    ('{"name": "get_weather", "parameters": {"city": "Köln"}}', "", [call(0, "get_weather", '{"city": "Köln"}')]),
    ('<|python_tag|>{"name": "f", "parameters": {"a": 1}}', "", [call(0, "f", '{"a": 1}')]),
    ('  \n<|python_tag|> {"name": "f", "arguments": {}}; {"name": "g", "parameters": {"b": [2]}}\n', "",
     [call(0, "f", "{}"), call(1, "g", '{"b": [2]}')]),
    ("The weather is fine.", "The weather is fine.", []),
    ("  Use {braces} later", "  Use {braces} later", []),
    ('{"name": "f", "parameters": {}} and some words', '{"name": "f", "parameters": {}} and some words', []),
    ('{"name": "f", "parameters": [1]}', '{"name": "f", "parameters": [1]}', []),
    ('{"city": "Köln"}', '{"city": "Köln"}', []),
    ("<|python_tag|>print(42)", "<|python_tag|>print(42)", []),  # Llama's code interpreter: not a function call
    ('{"name": "f", "parameters": {', '{"name": "f", "parameters": {', []),  # cut short by the length limit
    ("<|python_", "<|python_", []),
    ("", "", []),
])
def test_llama_json(text, content, calls):
    assert run(LlamaJsonParser, [text]) == (content, calls)
    assert run(LlamaJsonParser, list(text)) == (content, calls)


def test_llama_text_streams_once_it_cannot_be_a_call():
    parser = LlamaJsonParser(ids())
    assert parser.feed("\n<|python") == ("", [])
    assert parser.feed("_tag|>") == ("", [])
    assert parser.feed(" x") == ("\n<|python_tag|> x", [])
    assert parser.feed("y") == ("y", [])


@pytest.mark.parametrize("text, content, calls", [
    ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Köln"}}]', "",
     [call(0, "get_weather", '{"city": "Köln"}')]),
    ('Sure. [TOOL_CALLS] [{"name": "f", "arguments": {}}, {"name": "g", "arguments": {"a": 1}}]\n', "Sure. ",
     [call(0, "f", "{}"), call(1, "g", '{"a": 1}')]),
    ('[TOOL_CALLS]{"name": "f", "arguments": {}}', "", [call(0, "f", "{}")]),
    ("No tools [needed].", "No tools [needed].", []),
    ('[TOOL_CALLS][{"name": "f", "arguments": [1]}]', '[TOOL_CALLS][{"name": "f", "arguments": [1]}]', []),
    ('[TOOL_CALLS][{"name": "f"}, 3]', '[TOOL_CALLS][{"name": "f"}, 3]', []),
    ("[TOOL_CALLS][]", "[TOOL_CALLS][]", []),
    ('a [TOOL_CALLS][{"name": "f"', 'a [TOOL_CALLS][{"name": "f"', []),  # cut short by the length limit
    ("a [TOOL_", "a [TOOL_", []),
])
def test_mistral(text, content, calls):
    assert run(MistralParser, [text]) == (content, calls)
    assert run(MistralParser, list(text)) == (content, calls)


def test_call_ids_are_unique_openai_ids():
    parser = HermesParser()
    _, calls = parser.feed(f"<tool_call>{WEATHER}</tool_call><tool_call>{WEATHER}</tool_call>", final=True)
    assert len({c["id"] for c in calls}) == 2
    assert all(c["id"].startswith("call_") and len(c["id"]) > 10 for c in calls)
    _, calls = MistralParser().feed('[TOOL_CALLS][{"name": "f"}, {"name": "f"}]', final=True)
    assert len({c["id"] for c in calls}) == 2  # Mistral's templates take back only ids of 9 letters and digits
    assert all(len(c["id"]) == 9 and c["id"].isalnum() and c["id"].isascii() for c in calls)


@pytest.mark.parametrize("name, parser", [
    ("Qwen2.5-0.5B-Instruct.jinja", HermesParser), ("Qwen3-0.6B.jinja", HermesParser),
    ("SmolLM3-3B.jinja", HermesParser), ("Llama-3.1-8B-Instruct.jinja", LlamaJsonParser),
    ("Llama-3.2-3B-Instruct.jinja", LlamaJsonParser), ("Llama-4.jinja", LlamaJsonParser),
    ("Mistral-Nemo-Instruct-2407.jinja", MistralParser), ("Mistral-7B-Instruct.jinja", None),
    ("gemma-3-1b-it.jinja", None), ("DeepSeek-V3.jinja", None),
])
def test_format_from_the_template(name, parser):
    assert for_template((TEMPLATES / name).read_text(encoding="utf-8")) is parser
    assert for_template(None) is None


PIECES = ["<tool_call>", "</tool_call>", "<tool_", "call>", "\n", " ", "Hi", "{", "}", '"name": "f"', ", ",
          '"arguments": {"a": 1}', '"parameters": {}', "<|python_tag|>", ";", "x", "ö🙂", "[TOOL_CALLS]", "[TOOL_",
          "[", "]"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=14), st.data())
def test_any_cut_gives_the_whole_texts_result(parts, data):
    text = "".join(parts)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=8)))
    pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
    for parser_class in (HermesParser, LlamaJsonParser, MistralParser):
        whole = run(parser_class, [text])
        assert run(parser_class, pieces) == whole
        content, calls = whole
        assert all(json.loads(c["function"]["arguments"]) is not None for c in calls)
        if not calls:
            assert content == text  # nothing parsed: nothing lost or added
