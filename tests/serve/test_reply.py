"""A reply's tokens -> content, reasoning and tool calls, cut at stop strings: each stage holds back what it cannot
decide yet, so however the reply is cut into tokens the deltas add up to the same result."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.serve.reply import Delta, ReplyParser, StopStrings
from mlxmodels.tokenizer import StreamingDetokenizer, load_tokenizer
from tests.app.tiny import INSIDE_TEMPLATE, TEMPLATE, THINK_TEMPLATE, save_ascii_tokenizer

HERMES_TEMPLATE = TEMPLATE + "{# tools: <tool_call>{json}</tool_call> #}"
LLAMA_TEMPLATE = TEMPLATE + '{# tools: {"name": function name, "parameters": dictionary} #}'


class PieceTokenizer:
    """A tokenizer whose token n is the n-th of the pieces a text was cut into, so a test picks the cut."""

    def __init__(self, pieces, chat_template=None):
        self.pieces, self.chat_template = list(pieces), chat_template

    def token_to_id(self, token):
        return None

    def detokenizer(self):
        return StreamingDetokenizer(lambda ids: "".join(self.pieces[i] for i in ids))


def parse(pieces, template=None, stop=(), chat=True, tools=True, prompt="<|assistant|>") -> dict:
    """Everything the deltas of a reply cut into `pieces` add up to, and whether a stop string ended it."""
    counter = itertools.count()
    parser = ReplyParser(PieceTokenizer(pieces, template), prompt, list(stop), chat, tools,
                         new_call_id=lambda: f"call_{next(counter)}")
    deltas = [parser.feed(n) for n in range(len(pieces))] + [parser.finish()]
    calls = [c for d in deltas for c in d.tool_calls]
    assert [c.pop("index") for c in calls] == list(range(len(calls)))
    assert calls == parser.tool_calls
    result = {"content": "".join(d.content for d in deltas), "reasoning": "".join(d.reasoning for d in deltas),
              "tool_calls": calls, "stopped": parser.stopped}
    assert (result["content"], result["reasoning"]) == (parser.content, parser.reasoning)
    return result


def out(content="", reasoning="", tool_calls=(), stopped=False) -> dict:
    return {"content": content, "reasoning": reasoning, "tool_calls": list(tool_calls), "stopped": stopped}


def call(n, name, arguments) -> dict:
    return {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize("text, stop, expected", [
    ("Hello world", [], out("Hello world")),
    ("Hello world", ["wor"], out("Hello ", stopped=True)),
    ("Hello world", ["xyz", "o"], out("Hell", stopped=True)),
    ("Hello world", ["world!"], out("Hello world")),  # a held-back beginning no stop completed is text
    ("abcd", ["abcd", "bc"], out("a", stopped=True)),  # the stop completed first wins, as generation ends there
    ("abcd", ["abc", "bc"], out("", stopped=True)),  # two ending together: the longer
    ("Hello", ["", "lo"], out("Hel", stopped=True)),  # an empty stop string stops nothing
])
def test_stop_strings(text, stop, expected):
    assert parse([text], stop=stop) == expected
    assert parse(list(text), stop=stop) == expected


def test_stop_strings_hold_back_only_what_may_be_a_stop():
    stops = StopStrings(["END", "\n\n"])
    assert stops.feed("one E") == "one "
    assert stops.feed("N") == ""
    assert stops.feed("d?\n") == "ENd?"
    assert stops.feed("\nmore") == ""
    assert stops.stopped and stops.finish() == "" and stops.feed("x") == ""


def test_a_stop_string_ends_the_reply_in_its_token():
    """The token that completes a stop string flushes what every stage held back; later tokens add nothing."""
    parser = ReplyParser(PieceTokenizer(["<think>why</think>ans", " <tool_", "call>{", "more"],
                                        HERMES_TEMPLATE + "<think>"), "", ["call>{"], True, True)
    assert parser.feed(0) == Delta(reasoning="why", content="ans")
    assert parser.feed(1) == Delta()  # " <tool_" may begin a call
    assert parser.feed(2) == Delta(content=" <tool_") and parser.stopped
    assert parser.feed(3) == Delta() and parser.finish() == Delta()


@pytest.mark.parametrize("template, prompt, text, expected", [
    (THINK_TEMPLATE, "<|assistant|>", "<think>\nPlan.\n</think>\n\nAnswer.", out("Answer.", "Plan.")),
    (THINK_TEMPLATE, "<|assistant|>", "Answer only.", out("Answer only.")),
    (INSIDE_TEMPLATE, "<|assistant|><think>\n", "Plan.\n</think>\n\nAnswer.", out("Answer.", "Plan.")),
    (TEMPLATE, "<|assistant|>", "<think>x</think>y", out("<think>x</think>y")),  # the model does not think
])
def test_reasoning_of_thinking_templates(template, prompt, text, expected):
    assert parse([text], template, prompt=prompt) == expected
    assert parse(list(text), template, prompt=prompt) == expected


def test_stop_strings_cut_the_reasoning_too():
    assert parse(list("<think>a. b</think>c"), THINK_TEMPLATE, stop=[". "]) == out("", "a", stopped=True)


WEATHER = '{"name": "get_weather", "arguments": {"city": "Köln"}}'


@pytest.mark.parametrize("template, text, chat, tools, expected", [
    (HERMES_TEMPLATE, f"Sure.<tool_call>{WEATHER}</tool_call>", True, True,
     out("Sure.", tool_calls=[call(0, "get_weather", '{"city": "Köln"}')])),
    (HERMES_TEMPLATE, f"<tool_call>{WEATHER}</tool_call>", True, False,  # no tools offered: no calls parsed
     out(f"<tool_call>{WEATHER}</tool_call>")),
    (HERMES_TEMPLATE, f"<tool_call>{WEATHER}</tool_call>", False, True, out(f"<tool_call>{WEATHER}</tool_call>")),
    (LLAMA_TEMPLATE, '<|python_tag|>{"name": "f", "parameters": {"x": 1}}', True, True,
     out(tool_calls=[call(0, "f", '{"x": 1}')])),
    (LLAMA_TEMPLATE, '{"name": "f", "parameters": {"x": 1}', True, True, out('{"name": "f", "parameters": {"x": 1}')),
    (TEMPLATE, f"<tool_call>{WEATHER}</tool_call>", True, True, out(f"<tool_call>{WEATHER}</tool_call>")),
    # a thinking model's calls come after its reasoning; a call inside the reasoning is only thought
    (THINK_TEMPLATE + HERMES_TEMPLATE, (f"<think>maybe <tool_call>{WEATHER}</tool_call></think>"
                                        f"<tool_call>{WEATHER}</tool_call>"), True, True,
     out(reasoning=f"maybe <tool_call>{WEATHER}</tool_call>",
         tool_calls=[call(0, "get_weather", '{"city": "Köln"}')])),
])
def test_tool_calls_of_chats_that_offered_tools(template, text, chat, tools, expected):
    assert parse([text], template, chat=chat, tools=tools) == expected
    assert parse(list(text), template, chat=chat, tools=tools) == expected


def test_completions_get_text_only():
    text = f"<think>a</think><tool_call>{WEATHER}</tool_call>"
    assert parse(list(text), THINK_TEMPLATE + HERMES_TEMPLATE, chat=False) == out(text)


PIECES = ["<think>", "</think>", "<th", "ink>", "\n", " ", "Hi", ". ", "STOP", "ST", "<tool_call>", "</tool_call>",
          "<tool_", WEATHER, '{"name": "g"}', "{", "ö", "🙂"]
TEMPLATES = [TEMPLATE, THINK_TEMPLATE + HERMES_TEMPLATE, INSIDE_TEMPLATE + HERMES_TEMPLATE, LLAMA_TEMPLATE]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12), st.sampled_from(TEMPLATES),
       st.sampled_from([[], ["STOP"], [". ", "STOP"]]), st.booleans(), st.data())
def test_any_cut_into_tokens_gives_the_same_reply(parts, template, stop, chat, data):
    text = "".join(parts)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=10)))
    pieces = [p for p in (text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])) if p]
    prompt = "<|assistant|><think>\n" if template.startswith(INSIDE_TEMPLATE) else "<|assistant|>"
    whole = parse([text] if text else [], template, stop, chat, True, prompt)
    assert parse(pieces, template, stop, chat, True, prompt) == whole
    if not chat and not stop:
        assert whole == out(text)


def test_real_tokens_of_a_model_tokenizer(tmp_path):
    """Token ids through the model's own detokenizer: a thinking reply with a call, ending at a stop string."""
    save_ascii_tokenizer(tmp_path, THINK_TEMPLATE + HERMES_TEMPLATE)
    tokenizer = load_tokenizer(tmp_path)
    reply = '<think>\nCall it.\n</think>\n\nOK<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>\n###tail'
    parser = ReplyParser(tokenizer, "<|assistant|>", ["###"], chat=True, tools=True)
    deltas = [parser.feed(t) for t in tokenizer.encode(reply, add_special_tokens=False)] + [parser.finish()]
    assert "".join(d.content for d in deltas) == "OK" and parser.stopped
    assert "".join(d.reasoning for d in deltas) == "Call it."
    (delta,) = [d for d in deltas if d.tool_calls]
    (sent,) = delta.tool_calls
    assert sent["index"] == 0 and sent["id"].startswith("call_")
    assert sent["function"] == {"name": "f", "arguments": '{"x": 1}'}
    assert parser.tool_calls == [{k: v for k, v in sent.items() if k != "index"}]


@pytest.mark.parametrize("vocabulary, template, reply", [
    ("qwen2", THINK_TEMPLATE + HERMES_TEMPLATE,
     '<think>\nDas Wetter in Köln? Nachsehen 🙂\n</think>\n\nGern.\n<tool_call>\n' + WEATHER + '\n</tool_call>'),
    ("llama-bpe", LLAMA_TEMPLATE, '{"name": "get_weather", "parameters": {"city": "Köln"}}'),
])
def test_real_vocabularies(tmp_path, vocabulary, template, reply):
    """A real byte-level BPE (llama.cpp's Qwen2 and Llama 3 vocabularies) cuts words, markers and characters its
    own way; the reply comes out whole."""
    from tests.formats.test_gguf_tokenizer import real_vocabulary

    tokenizer = real_vocabulary(tmp_path, vocabulary)
    tokenizer.chat_template = template
    ids = tokenizer.encode(reply, add_special_tokens=False)
    assert 1 < len(ids) < len(reply.encode())  # tokens of several bytes, not one per character
    parser = ReplyParser(tokenizer, "<|assistant|>", [], chat=True, tools=True)
    deltas = [parser.feed(t) for t in ids] + [parser.finish()]
    thinking = "<think>" in reply
    assert "".join(d.reasoning for d in deltas) == ("Das Wetter in Köln? Nachsehen 🙂" if thinking else "")
    assert "".join(d.content for d in deltas) == ("Gern." if thinking else "")
    assert [c["function"] for c in parser.tool_calls] == [{"name": "get_weather", "arguments": '{"city": "Köln"}'}]
