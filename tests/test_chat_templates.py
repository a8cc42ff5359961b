"""Real chat templates (tests/data/templates, sources in SOURCES.md there) render exactly as transformers'
apply_chat_template renders them, for the conversations users bring: reasoning under each of its names, tools and
tool calls with dict or JSON-string arguments, list-of-parts content, None fields, template switches.

Each template is saved with a small byte-level tokenizer and the model's own special tokens; transformers'
AutoTokenizer and our load_tokenizer read the same folder, so the whole path is compared (special tokens map,
message preparation, rendering, encoding). Where the template refuses a conversation, both must refuse it.
"""

import json
from pathlib import Path

import pytest

from mlxmodels.tokenizer import TokenizerError, load_tokenizer
from tests.oracle import save_byte_tokenizer

DATA = Path(__file__).parent / "data"
TEMPLATES = DATA / "templates"


def _specials_of(folder: str) -> dict:
    config = json.loads((DATA / "tokenizers" / folder / "tokenizer_config.json").read_text())
    return {k: config.get(k) for k in ("bos_token", "eos_token", "pad_token")}


DEEPSEEK = {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"}
LLAMA3 = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
QWEN = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
MISTRAL = {"bos_token": "<s>", "eos_token": "</s>"}
# template file -> the special tokens its tokenizer_config.json sets (null where the model has none)
MODELS = {
    "Qwen3-0.6B.jinja": QWEN,
    "Qwen2.5-0.5B-Instruct.jinja": QWEN,
    "Llama-3.1-8B-Instruct.jinja": LLAMA3,
    "Llama-3.2-3B-Instruct.jinja": LLAMA3,
    "Llama-4.jinja": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot|>"},
    "DeepSeek-V3.jinja": DEEPSEEK,
    "DeepSeek-R1.jinja": DEEPSEEK,
    "Kimi-K2-Instruct.jinja": {"bos_token": "[BOS]", "eos_token": "[EOS]", "pad_token": "[PAD]"},
    "gemma-3-270m-it.jinja": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
    "gemma-3-1b-it.jinja": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
    "Mistral-7B-Instruct.jinja": MISTRAL,
    "Mistral-Nemo-Instruct-2407.jinja": MISTRAL,
    "SmolLM3-3B.jinja": _specials_of("SmolLM3-3B"),
    "OLMo-2-7B-Instruct.jinja": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>"},
    "gpt-oss-20b.jinja": _specials_of("gpt-oss-20b"),
}

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city – e.g. Köln",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "the city"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "the unit"}},
        "required": ["city"]}}}
ARGS = {"city": "Köln", "unit": "celsius"}


def _tool_chat(arguments, content=None) -> list[dict]:
    """A tool round trip; the calling turn's content is None as the OpenAI API sends it (Qwen3's template then
    refuses the chat, in transformers too) or "" as other clients send it."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    return [{"role": "user", "content": "Wie ist das Wetter in Köln?"},
            {"role": "assistant", "content": content, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": '{"temp": 21}'},
            {"role": "assistant", "content": "Es sind 21 °C."},
            {"role": "user", "content": "Danke!"}]


def _reasoning_chat(field: str) -> list[dict]:
    return [{"role": "system", "content": "Think first."},
            {"role": "user", "content": "2 + 2?"},
            {"role": "assistant", "content": "4", field: "Two and two make four."},
            {"role": "user", "content": "And 3 + 3?"},
            {"role": "assistant", "content": "6", field: "Three and three make six."}]


# (name, messages, kwargs): what users bring. Templates that do not know a feature must still agree with transformers.
CHATS = [
    ("plain", [{"role": "system", "content": "You are terse. 🙂"}, {"role": "user", "content": "  Hi there  "},
               {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye?"}], {}),
    ("single user", [{"role": "user", "content": "What is MLX?"}], {}),
    ("no generation prompt", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}],
     {"add_generation_prompt": False}),
    *[(f"reasoning as {f}", _reasoning_chat(f), {"add_generation_prompt": False}) for f in
      ("reasoning_content", "thinking", "reasoning")],
    ("reasoning, next turn", _reasoning_chat("reasoning_content")[:4], {}),
    ("tools, dict arguments", _tool_chat(ARGS), {"tools": [WEATHER]}),
    ("tools, JSON-string arguments", _tool_chat(json.dumps(ARGS, ensure_ascii=False)), {"tools": [WEATHER]}),
    ("tools, empty content", _tool_chat(ARGS, ""), {"tools": [WEATHER]}),
    ("tools, JSON-string arguments, empty content", _tool_chat(json.dumps(ARGS, ensure_ascii=False), ""),
     {"tools": [WEATHER]}),
    ("tools offered, none called", [{"role": "user", "content": "Hi"}], {"tools": [WEATHER]}),
    ("list-of-parts content", [{"role": "system", "content": [{"type": "text", "text": "Be kind."}]},
                               {"role": "user", "content": [{"type": "text", "text": "Describe "},
                                                            {"type": "text", "text": "this."}]}], {}),
    ("None fields", [{"role": "user", "content": "Hi", "name": None, "tool_calls": None}], {}),
    ("thinking off", [{"role": "user", "content": "Quick: 1 + 1?"}], {"enable_thinking": False}),
    ("reasoning effort", [{"role": "user", "content": "Plan a trip."}], {"reasoning_effort": "high"}),
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """template file -> (ours, transformers'), both loaded from one saved folder."""
    from transformers import AutoTokenizer

    out = {}
    for name, specials in MODELS.items():
        folder = tmp_path_factory.mktemp(name.removesuffix(".jinja"))
        fast = save_byte_tokenizer(folder)
        fast.add_special_tokens({k: v for k, v in specials.items() if v is not None})
        for k, v in specials.items():
            if v is None:
                setattr(fast, k, None)
        fast.chat_template = (TEMPLATES / name).read_bytes().decode("utf-8")
        fast.save_pretrained(folder)
        out[name] = (load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder)))
    return out


def test_every_template_file_is_tested():
    assert sorted(p.name for p in TEMPLATES.glob("*.jinja")) == sorted(MODELS)


@pytest.mark.parametrize("name", list(MODELS))
def test_renders_as_transformers(folders, name):
    ours, theirs = folders[name]
    assert ours.special_tokens_map == theirs.special_tokens_map
    rendered = 0
    for chat, messages, kwargs in CHATS:
        kwargs = {"add_generation_prompt": True, **kwargs}
        try:
            expected = theirs.apply_chat_template(messages, tokenize=False, **kwargs)
        except Exception as e:  # the template refuses this chat (raise_exception, a missing field): so must we
            with pytest.raises(TokenizerError, match="chat template"):
                ours.apply_chat_template(messages, **kwargs)
            assert str(e).split("\n")[0][:60] in str(_error(ours, messages, kwargs)), chat
            continue
        assert ours.apply_chat_template(messages, **kwargs) == expected, chat
        ids = theirs.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)
        assert ours.apply_chat_template(messages, tokenize=True, **kwargs) == ids, chat
        rendered += 1
    assert rendered >= 5  # the strictest template (Mistral 7B: no system, strict alternation) still renders 6


def _error(tok, messages, kwargs) -> str:
    try:
        tok.apply_chat_template(messages, **kwargs)
    except TokenizerError as e:
        return str(e)
    return ""


def test_features_reach_the_templates(folders):
    """The comparison above covers what matters: each feature changes some real template's output."""
    def render(name, messages, **kwargs):
        return folders[name][0].apply_chat_template(messages, **kwargs)

    chats = {chat: (messages, kwargs) for chat, messages, kwargs in CHATS}
    # gpt-oss reads `thinking`, Qwen3 and DeepSeek-R1-style templates `reasoning_content`: every name reaches both
    for name, marker in (("gpt-oss-20b.jinja", "<|channel|>analysis"), ("Qwen3-0.6B.jinja", "<think>")):
        for field in ("reasoning_content", "thinking", "reasoning"):
            messages, kwargs = chats[f"reasoning as {field}"]
            text = render(name, messages, **kwargs)
            assert "Three and three make six." in text and marker in text, (name, field)
    # Qwen3 prints JSON-string arguments as they are and dict arguments as JSON: the same call either way
    qwen = [render("Qwen3-0.6B.jinja", *chats[c][:1], **chats[c][1]) for c in
            ("tools, empty content", "tools, JSON-string arguments, empty content")]
    assert qwen[0] == qwen[1] and '"arguments": {"city": "Köln", "unit": "celsius"}' in qwen[0]
    # a None content is dropped, not printed as "None"
    assert "None" not in render("Llama-3.1-8B-Instruct.jinja", *chats["tools, dict arguments"][:1], tools=[WEATHER])
    assert render("Qwen3-0.6B.jinja", [{"role": "user", "content": "x"}], enable_thinking=False).endswith(
        "<think>\n\n</think>\n\n")
    assert "Reasoning: high" in render("gpt-oss-20b.jinja", [{"role": "user", "content": "x"}],
                                       reasoning_effort="high")
    # list-of-parts content: Gemma 3 puts the system text before the first user turn and trims every part
    assert "Be kind.\n\nDescribethis." in render("gemma-3-270m-it.jinja", *chats["list-of-parts content"][:1])


def test_message_objects_become_plain_data(folders):
    """Dataclasses and pydantic-style objects (the OpenAI SDK's messages) are passed as dicts, like transformers."""
    from dataclasses import dataclass

    @dataclass
    class Message:
        role: str
        content: str
        reasoning_content: str = None

    class Model:  # a pydantic-like object: model_dump() gives the dict
        def __init__(self, **data):
            self.data = data

        def model_dump(self):
            return dict(self.data)

    ours, theirs = folders["Qwen3-0.6B.jinja"]
    messages = [Model(role="user", content="Hi"), Message("assistant", "Hello", "greet back")]
    assert ours.apply_chat_template(messages, add_generation_prompt=False) == theirs.apply_chat_template(
        messages, tokenize=False)


@pytest.mark.parametrize("messages, tools, match", [
    ("hello", None, "list of dicts"),
    (["hello"], None, "message 0 is a str"),
    ([{"role": "user", "content": "x"}], [print], "JSON schemas"),
    ([{"role": "user", "content": "x"}], {"type": "function"}, "JSON schemas"),
])
def test_unusable_messages_are_one_clear_error(folders, messages, tools, match):
    with pytest.raises(TokenizerError, match=match):
        folders["Qwen3-0.6B.jinja"][0].apply_chat_template(messages, tools=tools)


def test_self_containing_messages_are_refused(folders):
    content = []
    content.append(content)
    with pytest.raises(TokenizerError, match="nested more than"):
        folders["Qwen3-0.6B.jinja"][0].apply_chat_template([{"role": "user", "content": content}])
