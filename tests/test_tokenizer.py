"""Tokenizer tests: tokenizers built here (byte-level BPE, SentencePiece-style, tiktoken), transformers as oracle."""

import base64
import functools
import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from mlxmodels.errors import ModelError
from mlxmodels.tokenizer import StreamingDetokenizer, TokenizerError, load_tokenizer
from tests.oracle import save_byte_tokenizer

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # man ZWJ woman ZWJ girl ZWJ boy
TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Größenwahn: Über die Brücke gehen Äpfel, Öl und Straße.",
    "你好，世界！我们今天去图书馆看书。",
    "こんにちは世界。東京は今日も晴れです。カタカナとひらがな。",
    "مرحبا بالعالم، كيف حالك اليوم؟",
    f"Family {FAMILY}, flags 🇩🇪🇯🇵, thumbs 👍🏽, heart ❤️.",
    "Combining: e\u0301 a\u0308 n\u0303, Zalgo Z\u0351\u0364a\u0307l\u0350g\u0357o.",
    "def f(x):\n    return x ** 2  # tab\there\r\nend",
    "Numbers 1234567890, pi 3.14159, prices €12,50 and ¥500.",
]
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CHATML_SPECIALS = ["<|im_start|>", "<|im_end|>"]

LLAMA3_LIKE_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
CHATML_TEMPLATE = """{%- if tools %}
<|im_start|>system
You may call these tools:
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role not in ['system', 'user', 'assistant'] %}
{{- raise_exception('unknown role ' + message.role) }}
{%- endif %}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""
MESSAGES = [
    {"role": "system", "content": "Du bist hilfsbereit. 🙂"},
    {"role": "user", "content": "  Wie ist das Wetter in München? 天气如何？  "},
    {"role": "assistant", "content": "Sonnig ☀️."},
    {"role": "user", "content": "Und morgen?"},
]
TOOLS = [{"type": "function", "function": {
    "name": "wetter", "description": "Wetter für einen Ort – z. B. Köln",
    "parameters": {"type": "object", "properties": {"ort": {"type": "string"}}}}}]


# ---------------------------------------------------------------- building tokenizers


@functools.cache
def _byte_level() -> RustTokenizer:
    """GPT-2/Llama 3-style byte-level BPE; a small vocabulary splits emoji and CJK over several tokens."""
    tk = RustTokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=LLAMA3_SPECIALS + CHATML_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(TEXTS * 4, trainer)
    bos = "<|begin_of_text|>"
    tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tk.token_to_id(bos))])
    return tk


def _with_byte_fallback(tk: RustTokenizer) -> RustTokenizer:
    """Add SentencePiece's <0xXX> tokens, so characters outside the small alphabet still encode."""
    data = json.loads(tk.to_str())
    vocab = data["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    data["model"]["byte_fallback"] = True
    return RustTokenizer.from_str(json.dumps(data))


def _llama2_style() -> RustTokenizer:
    """Llama 2/Mistral-style: '▁' for spaces via the normalizer, byte fallback, Strip decoder; no post-processor."""
    tk = RustTokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=50,
                                  show_progress=False)
    tk.train_from_iterator(TEXTS * 4, trainer)
    return _with_byte_fallback(tk)


def _metaspace_unigram() -> RustTokenizer:
    """SentencePiece Unigram with Metaspace pre-tokenizer and decoder (T5/ALBERT-style), BOS by post-processor."""
    tk = RustTokenizer(models.Unigram())
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>",
                                      show_progress=False)
    tk.train_from_iterator(TEXTS * 4, trainer)
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))])
    return tk


def _save(folder, tk, tokenizer_config, **files):
    folder.mkdir()
    tk.save(str(folder / "tokenizer.json"))
    tokenizer_config = {"tokenizer_class": "TokenizersBackend", **tokenizer_config}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    for name, content in files.items():
        (folder / f"{name}.json").write_text(json.dumps(content))
    return folder


def _tiktoken_lines(tk: RustTokenizer) -> str:
    """The byte-level BPE's vocabulary as a Llama 3 'original/tokenizer.model' (merge order = rank order)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    vocab = sorted((i, t) for t, i in tk.get_vocab(with_added_tokens=False).items() if not t.startswith("<|"))
    tokens = [bytes(to_byte[c] for c in t) for _, t in vocab]
    return "".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    byte_level = _byte_level()
    chatml = RustTokenizer.from_str(byte_level.to_str())
    chatml.post_processor = processors.ByteLevel(trim_offsets=False)  # Qwen-style: no BOS
    tiktoken_dir = root / "tiktoken"
    (tiktoken_dir / "original").mkdir(parents=True)
    (tiktoken_dir / "original" / "tokenizer.model").write_text(_tiktoken_lines(byte_level))
    eot = {"__type": "AddedToken", "content": "<|eot_id|>", "lstrip": False, "normalized": False, "rstrip": False,
           "single_word": False, "special": True}  # older configs save special tokens as dicts
    end_of_text, eot_id = byte_level.token_to_id("<|end_of_text|>"), byte_level.token_to_id("<|eot_id|>")
    return {
        "llama3": _save(root / "llama3", byte_level,
                        {"bos_token": "<|begin_of_text|>", "eos_token": eot, "chat_template": LLAMA3_LIKE_TEMPLATE,
                         "clean_up_tokenization_spaces": False},
                        generation_config={"eos_token_id": [end_of_text, eot_id]}),
        "chatml": _save(root / "chatml", chatml,
                        {"bos_token": None, "eos_token": "<|im_end|>", "add_bos_token": False,
                         "chat_template": CHATML_TEMPLATE},
                        config={"eos_token_id": end_of_text}),
        "llama2": _save(root / "llama2", _llama2_style(),
                        {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}),
        "unigram": _save(root / "unigram", _metaspace_unigram(), {"bos_token": "<s>", "eos_token": "</s>"}),
        "tiktoken": tiktoken_dir,
    }


@pytest.fixture(scope="module")
def toks(folders):
    return {name: load_tokenizer(path) for name, path in folders.items()}


@pytest.fixture(scope="module")
def hf(folders):
    """transformers' view of the same folders: the oracle."""
    from transformers import AutoTokenizer

    return {name: AutoTokenizer.from_pretrained(str(folders[name]))
            for name in ("llama3", "chatml", "llama2", "unigram")}


def _stream(tok, ids, **kw):
    det = tok.detokenizer(**kw)
    pieces = [det.add_token(i) for i in ids]
    pieces.append(det.finalize())
    assert det.text == "".join(pieces)
    return pieces


# ---------------------------------------------------------------- encode / decode


@pytest.mark.parametrize("name", ["llama3", "chatml", "llama2", "tiktoken"])
def test_round_trip(toks, name):
    tok = toks[name]
    for text in TEXTS + [" leading space", "two  spaces\n\nand newlines  "]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
        assert tok.decode(tok.encode(text), skip_special_tokens=True) == text


def test_unigram_round_trip_on_its_alphabet(toks):
    for text in TEXTS:
        assert toks["unigram"].decode(toks["unigram"].encode(text), skip_special_tokens=True) == text


@pytest.mark.parametrize("name", ["llama3", "chatml", "llama2", "unigram"])
def test_matches_transformers(toks, hf, name):
    tok, ref = toks[name], hf[name]
    # One deliberate difference: a tokenizer.json without post-processor follows add_bos_token (test_bos_and_eos).
    bos = [tok.bos_token_id] if name == "llama2" else []
    for text in TEXTS + ["<|im_start|>user\nhi<|im_end|>", "<s> x </s>"]:
        ids = tok.encode(text)
        assert ids == bos + ref(text)["input_ids"]
        assert tok.encode(text, add_special_tokens=False) == ref(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == ref.decode(ids)
        assert tok.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    assert tok.vocab_size == len(ref)


def test_folder_saved_by_transformers(tmp_path, toks, hf):
    """transformers 5 writes chat_template.jinja and its own tokenizer_config.json; we read them the same."""
    hf["llama3"].save_pretrained(str(tmp_path))
    assert (tmp_path / "chat_template.jinja").is_file()
    tok, ref = load_tokenizer(tmp_path), toks["llama3"]
    assert tok.apply_chat_template(MESSAGES) == ref.apply_chat_template(MESSAGES)
    assert tok.encode(TEXTS[5]) == ref.encode(TEXTS[5]) and tok.bos_token_id == ref.bos_token_id
    assert ref.eos_token_ids - tok.eos_token_ids == {ref.token_to_id("<|end_of_text|>")}  # not in tokenizer files


def test_tiktoken_matches_transformers_conversion(folders, toks):
    """transformers' TikTokenConverter turns the same file into a tokenizers BPE with Llama 3's pattern."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from mlxmodels.tokenizer import _LLAMA3_SPECIALS

    ref = TikTokenConverter(str(folders["tiktoken"] / "original" / "tokenizer.model"),
                            extra_special_tokens=_LLAMA3_SPECIALS).converted()
    tok = toks["tiktoken"]
    for text in TEXTS + ["<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == ref.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False)


def test_bos_and_eos(toks, hf):
    llama3, chatml, llama2, unigram = toks["llama3"], toks["chatml"], toks["llama2"], toks["unigram"]
    bot, eot, eoft = (llama3.token_to_id(t) for t in ("<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>"))
    assert llama3.bos_token_id == bot and llama3.encode("hi")[0] == bot and llama3.encode("hi", False)[0] != bot
    assert llama3.eos_token_ids == {eot, eoft}  # tokenizer_config (a dict) + generation_config (a list)
    # The tokenizer.json post-processor adds nothing here, and add_bos_token: false agrees.
    assert chatml.bos_token_id is None and bot not in chatml.encode("hi")
    assert chatml.eos_token_ids == {chatml.token_to_id("<|im_end|>"), eoft}  # + config.json's int
    # No post-processor: add_bos_token decides (transformers 4 semantics; transformers 5 would add nothing).
    assert llama2.bos_token_id == llama2.token_to_id("<s>") == 1
    assert llama2.encode("hi")[0] == 1 and 1 not in llama2.encode("hi", add_special_tokens=False)
    assert llama2.eos_token_ids == {2}
    assert unigram.encode("hi")[0] == unigram.bos_token_id == hf["unigram"].bos_token_id


def test_tiktoken_layout(folders, toks):
    """Meta's llama3 tokenizer.py numbers its 256 special tokens right after the BPE ranks."""
    tok = toks["tiktoken"]
    n = len((folders["tiktoken"] / "original" / "tokenizer.model").read_text().splitlines())
    assert tok.vocab_size == n + 256
    expected = {"<|begin_of_text|>": 0, "<|end_of_text|>": 1, "<|reserved_special_token_0|>": 2,
                "<|reserved_special_token_3|>": 5, "<|start_header_id|>": 6, "<|end_header_id|>": 7,
                "<|reserved_special_token_4|>": 8, "<|eot_id|>": 9, "<|reserved_special_token_5|>": 10,
                "<|reserved_special_token_250|>": 255}
    assert {t: tok.token_to_id(t) - n for t in expected} == expected
    assert tok.bos_token_id == n and tok.eos_token_ids == {n + 1, n + 9}
    assert tok.encode("hi")[0] == n and tok.encode("hi", add_special_tokens=False)[0] != n
    assert tok.encode("<|eot_id|>", add_special_tokens=False) == [n + 9]
    assert tok.decode([n, *tok.encode("hi", False), n + 9], skip_special_tokens=True) == "hi"


# ---------------------------------------------------------------- streaming


@pytest.mark.parametrize("name", ["llama3", "llama2", "unigram", "tiktoken"])
def test_streaming_equals_decode(toks, name):
    tok = toks[name]
    for text in TEXTS + [FAMILY * 3, "🦄𝄞 ümlaut " + FAMILY]:
        ids = tok.encode(text)
        pieces = _stream(tok, ids)
        assert "".join(pieces) == tok.decode(ids)
        assert not any("\ufffd" in p for p in pieces)
        assert pieces[-1] == ""  # valid text is out before finalize
        assert "".join(_stream(tok, ids, skip_special_tokens=True)) == tok.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("name", ["llama3", "llama2", "tiktoken"])
def test_streaming_emoji_split_over_tokens(toks, name):
    tok = toks[name]
    ids = tok.encode(FAMILY, add_special_tokens=False)
    assert len(ids) > 4 and any("\ufffd" in tok.decode(ids[:k]) for k in range(len(ids)))  # characters split
    pieces = _stream(tok, ids)
    assert "".join(pieces) == FAMILY and all("\ufffd" not in p for p in pieces)


def test_streaming_keeps_metaspace_spaces(toks):
    for name in ("llama2", "unigram"):
        tok = toks[name]
        ids = tok.encode("Hello world the fox", add_special_tokens=False)
        assert "".join(_stream(tok, ids)) == "Hello world the fox"


def test_streaming_window_stays_small():
    """Each step decodes a few recent tokens, not the whole sequence."""
    seen = []

    def decode(ids):
        seen.append(len(ids))
        return "".join(chr(65 + i % 26) for i in ids)

    det = StreamingDetokenizer(decode)
    out = "".join(det.add_token(i) for i in range(5000)) + det.finalize()
    assert out == decode(list(range(5000))) and max(seen[:-1]) <= 2


def test_streaming_holds_incomplete_characters():
    """Bytes of one character come out together, once the last one arrives."""
    det = StreamingDetokenizer(lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    assert [det.add_token(b) for b in "中a🙂".encode()] == ["", "", "中", "a", "", "", "", "🙂"]
    assert det.finalize() == "" and det.text == "中a🙂"
    det = StreamingDetokenizer(lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    assert [det.add_token(b) for b in b"x\xe4\xb8"] == ["x", "", ""]
    assert det.finalize() == "\ufffd" and det.text == "x\ufffd"  # an unfinished character is flushed as U+FFFD


CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="\ufffd")  # valid text; no genuine U+FFFD
_settings = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("name", ["llama3", "unigram", "tiktoken"])
@_settings
@given(data=st.data())
def test_streaming_any_ids(toks, name, data):
    """For any id sequence (broken UTF-8 included), the pieces add up to decode()."""
    tok = toks[name]
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=40))
    assert "".join(_stream(tok, ids)) == tok.decode(ids)


@_settings
@given(data=st.data())
def test_streaming_any_ids_byte_fallback(toks, data):
    """Any ids that form whole characters. (On broken UTF-8, tokenizers' ByteFallback decoder replaces a whole
    run of byte tokens, valid ones included, so no stream that emits early can match decode() there.)"""
    tok = toks["llama2"]
    byte_ids = {tok.token_to_id(f"<0x{b:02X}>") for b in range(256)}
    normal = st.integers(0, tok.vocab_size - 1).filter(lambda i: i not in byte_ids).map(lambda i: [i])
    char = CHARS.map(lambda c: [tok.token_to_id(f"<0x{b:02X}>") for b in c.encode()])
    ids = sum(data.draw(st.lists(normal | char, max_size=30)), [])
    pieces = _stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids) and not any("\ufffd" in p for p in pieces)


@pytest.mark.parametrize("name", ["llama3", "llama2", "tiktoken"])
@_settings
@given(text=st.text(CHARS, max_size=30)
       | st.lists(st.sampled_from([FAMILY, "👍🏽", "🇩🇪", "e\u0301", "中", "ö", " ", "a", "\n"]), max_size=12)
       .map("".join))
def test_streaming_valid_text(toks, name, text):
    """Valid text streams without U+FFFD pieces and round-trips exactly."""
    tok = toks[name]
    pieces = _stream(tok, tok.encode(text, add_special_tokens=False))
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


# ---------------------------------------------------------------- chat templates


def test_llama3_like_template(toks, hf):
    tok = toks["llama3"]
    text = tok.apply_chat_template(MESSAGES)
    header = "<|start_header_id|>{}<|end_header_id|>\n\n".format
    assert text.startswith("<|begin_of_text|>" + header("system") + "Du bist hilfsbereit. 🙂<|eot_id|>")
    assert header("user") + "Wie ist das Wetter in München? 天气如何？<|eot_id|>" in text  # trimmed
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    for gen in (True, False):
        ours = tok.apply_chat_template(MESSAGES, add_generation_prompt=gen)
        assert ours == hf["llama3"].apply_chat_template(MESSAGES, add_generation_prompt=gen, tokenize=False)
    ids = tok.apply_chat_template(MESSAGES, tokenize=True)
    assert ids == hf["llama3"].apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=False)
    assert ids.count(tok.bos_token_id) == 1 and tok.decode(ids) == text


def test_chatml_template_with_tools(toks, hf):
    tok = toks["chatml"]
    text = tok.apply_chat_template(MESSAGES, tools=TOOLS)
    assert '"description": "Wetter für einen Ort – z. B. Köln"' in text  # tojson keeps non-ASCII
    assert "<|im_start|>user\n  Wie ist das Wetter in München? 天气如何？  <|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    for tools in (TOOLS, None):
        ours = tok.apply_chat_template(MESSAGES, tools=tools)
        assert ours == hf["chatml"].apply_chat_template(MESSAGES, tools=tools, add_generation_prompt=True,
                                                        tokenize=False)
    assert "You may call" not in tok.apply_chat_template(MESSAGES)
    ids = tok.apply_chat_template(MESSAGES, tools=TOOLS, tokenize=True)
    assert ids == hf["chatml"].apply_chat_template(MESSAGES, tools=TOOLS, add_generation_prompt=True, return_dict=False)
    assert tok.decode(ids) == text


def test_tiktoken_builtin_llama3_template(toks):
    tok = toks["tiktoken"]
    assert tok.has_chat_template
    text = tok.apply_chat_template([{"role": "user", "content": " hi "}])
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok.apply_chat_template([{"role": "user", "content": " hi "}], tokenize=True)
    n = tok.vocab_size - 256
    assert ids[:2] == [n, n + 6] and ids.count(n) == 1 and n + 9 in ids


def _folder_with_template(tmp_path, template, **extra_files):
    tmp_path.mkdir(exist_ok=True)
    _byte_level().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|eot_id|>", "chat_template": template}))
    for name, content in extra_files.items():
        (tmp_path / name).write_text(content)
    return load_tokenizer(tmp_path)


def test_template_sources(tmp_path):
    named = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "DEFAULT"}]
    assert _folder_with_template(tmp_path / "a", named).apply_chat_template([]) == "DEFAULT"
    # transformers 5 saves chat_template.jinja (or chat_template.json); those win over tokenizer_config.json.
    tok = _folder_with_template(tmp_path / "b", "CONFIG", **{"chat_template.jinja": "JINJA"})
    assert tok.apply_chat_template([]) == "JINJA"
    tok = _folder_with_template(tmp_path / "c", "CONFIG", **{"chat_template.json": '{"chat_template": "JSON"}'})
    assert tok.apply_chat_template([]) == "JSON"
    none = _folder_with_template(tmp_path / "d", None)
    assert not none.has_chat_template
    with pytest.raises(TokenizerError, match="no chat template"):
        none.apply_chat_template(MESSAGES)


def test_template_globals_and_extensions(tmp_path):
    template = ("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
                "{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}"
                "{{ strftime_now('%Y') }} {{ eos_token }} {{ {'k': 'ä'} | tojson }} {{ custom }}")
    tok = _folder_with_template(tmp_path, template)
    expected = f'[Du bist hilfsbereit. 🙂]{datetime.now():%Y} <|eot_id|> {{"k": "ä"}} 42'
    assert tok.apply_chat_template(MESSAGES, custom=42) == expected


@pytest.mark.parametrize("template, message", [
    ("{{ raise_exception('system messages are not supported') }}", "system messages are not supported"),
    ("{% for m in messages %}", "TemplateSyntaxError"),
    ("{{ ''.__class__.__mro__ }}", "unsafe"),
    ("{{ messages.append(1) }}", "SecurityError"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
    ("{{ messages[0].content + 1 }}", "TypeError"),
])
def test_template_errors_and_sandbox(toks, template, message):
    tok = toks["chatml"]
    original, tok.chat_template = tok.chat_template, template
    try:
        with pytest.raises(TokenizerError, match=message):
            tok.apply_chat_template(MESSAGES)
    finally:
        tok.chat_template = original


def test_sandbox_hides_private_attributes(tmp_path):
    tok = _folder_with_template(tmp_path, "[{{ raise_exception.__globals__ }}{{ messages.__class__ }}]")
    assert tok.apply_chat_template(MESSAGES) == "[]"  # unsafe attributes are undefined, as in transformers


def test_chatml_unknown_role_raises(toks):
    with pytest.raises(TokenizerError, match="unknown role tool"):
        toks["chatml"].apply_chat_template([{"role": "tool", "content": "x"}])


# ---------------------------------------------------------------- folders and errors


def test_no_tokenizer_files(tmp_path):
    assert load_tokenizer(tmp_path) is None
    (tmp_path / "config.json").write_text("{}")
    assert load_tokenizer(tmp_path) is None


def test_bad_files(tmp_path, folders):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": ')
    with pytest.raises(TokenizerError, match=r"tokenizer\.json.*download it again"):
        load_tokenizer(bad)

    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "tokenizer.json").write_bytes((folders["llama3"] / "tokenizer.json").read_bytes())
    (cfg / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"tokenizer_config\.json is not valid JSON"):
        load_tokenizer(cfg)
    (cfg / "tokenizer_config.json").unlink()
    (cfg / "tokenizer_config.json").mkdir()  # not a file: refused without reading it
    with pytest.raises(ModelError, match=r"tokenizer_config\.json is a folder, not a regular file"):
        load_tokenizer(cfg)

    only_cfg = tmp_path / "only_cfg"
    only_cfg.mkdir()
    (only_cfg / "tokenizer_config.json").write_text("{}")
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(only_cfg)


def test_sentencepiece_model_needs_tokenizer_json(tmp_path):
    # The first bytes of a real SentencePiece ModelProto: field 1 (pieces), a piece "<unk>" with score 0.
    (tmp_path / "tokenizer.model").write_bytes(b"\n\x0b\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02\n\x07\n\x03<s>\x15\x00")
    with pytest.raises(TokenizerError, match="SentencePiece.*provide tokenizer.json"):
        load_tokenizer(tmp_path)


def test_tiktoken_beside_sentencepiece(tmp_path, folders):
    """Meta's Hub repos keep tiktoken ranks in original/; a SentencePiece tokenizer.model beside it is skipped."""
    (tmp_path / "original").mkdir()
    lines = (folders["tiktoken"] / "original" / "tokenizer.model").read_text()
    (tmp_path / "original" / "tokenizer.model").write_text(lines + "\n")
    (tmp_path / "tokenizer.model").write_bytes(b"\n\x0b\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02")
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    tok = load_tokenizer(tmp_path)
    n = len(lines.splitlines())
    assert tok.eos_token_ids == {n + 1, n + 9, 7, 9} and tok.decode(tok.encode("Größe")) == "<|begin_of_text|>Größe"
    assert tok.decode([n + 1000, *tok.encode("ok", False)]) == "ok"  # unknown ids are skipped, as tokenizers does


def test_damaged_tiktoken_file(tmp_path):
    (tmp_path / "tokenizer.model").write_text("IQ== 0\nnot base64!! x\n")
    with pytest.raises(TokenizerError, match="line 2"):
        load_tokenizer(tmp_path)


def test_never_runs_folder_code(tmp_path, folders):
    """A config naming a custom class and auto_map loads as plain tokenizer.json; the module is never imported."""
    (tmp_path / "tokenizer.json").write_bytes((folders["llama3"] / "tokenizer.json").read_bytes())
    marker = tmp_path / "pwned"
    (tmp_path / "tokenization_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "EvilTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]},
        "trust_remote_code": True, "eos_token": "<|eot_id|>"}))
    tok = load_tokenizer(tmp_path)
    assert tok.decode(tok.encode("Größe")[1:]) == "Größe" and not marker.exists()


# ---------------------------------------------------------------- real tokenizer files, BOS/EOS, tiktoken layouts

DATA = Path(__file__).parent / "data" / "tokenizers"
LONG_TEXT = " ".join(TEXTS) * 3  # ~300 GPT-2 tokens: past the saved truncation's 50


def _copy(src, dst, **edits):
    """A copy of a data folder; edits: file name -> new text."""
    shutil.copytree(src, dst)
    for name, text in edits.items():
        (dst / name).write_text(text)
    return dst


def test_saved_truncation_and_padding_never_cut_or_pad(tmp_path):
    """A real GPT-2 tokenizer.json saved after a truncated batch ("max_length": 50); transformers ignores such a
    block unless asked, and gives the same ids as we do."""
    from transformers import AutoTokenizer

    data = json.loads((DATA / "gpt2-kv260" / "tokenizer.json").read_text())
    assert data["truncation"]["max_length"] == 50  # the data is what this test is about
    padded = RustTokenizer.from_file(str(DATA / "gpt2-kv260" / "tokenizer.json"))
    padded.no_truncation()
    padded.enable_padding(length=512, pad_id=50256, pad_token="<|endoftext|>")
    folders = {"truncation": _copy(DATA / "gpt2-kv260", tmp_path / "t"),
               "padding": _copy(DATA / "gpt2-kv260", tmp_path / "p", **{"tokenizer.json": padded.to_str()})}
    for kind, folder in folders.items():
        tok, ref = load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
        for text in (LONG_TEXT, "short"):
            ids = tok.encode(text)
            assert ids == ref(text)["input_ids"] and tok.decode(ids) == text, kind
        assert len(tok.encode(LONG_TEXT)) > 250 and tok.encode("short") == ref.encode("short"), kind
    assert RustTokenizer.from_file(str(DATA / "gpt2-kv260" / "tokenizer.json")).encode(LONG_TEXT).ids.__len__() == 50


def _bos_folder(tmp_path, tokenizer_config: dict | None, generation_config: dict):
    save_byte_tokenizer(tmp_path)  # <s> 256, </s> 257, <pad> 258, a post-processor that adds nothing
    if tokenizer_config is None:
        (tmp_path / "tokenizer_config.json").unlink()
        (tmp_path / "special_tokens_map.json").unlink(missing_ok=True)
    else:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (tmp_path / "generation_config.json").write_text(json.dumps(generation_config))
    return load_tokenizer(tmp_path)


def test_bos_and_eos_come_from_the_tokenizer_files_first(tmp_path):
    """Qwen2.5 and SmolLM3 say bos_token: null while generation_config.json has a bos_token_id: no BOS, as in
    transformers. Only a folder whose tokenizer files name no BOS/EOS takes them from generation_config/config."""
    from transformers import AutoTokenizer

    smollm3 = json.loads((DATA / "SmolLM3-3B" / "tokenizer_config.json").read_text())
    generation = json.loads((DATA / "SmolLM3-3B" / "generation_config.json").read_text())
    assert smollm3["bos_token"] is None and generation["bos_token_id"] == 128000  # the real files disagree
    config = {"bos_token": None, "eos_token": "</s>", "tokenizer_class": "PreTrainedTokenizerFast"}
    tok = _bos_folder(tmp_path / "null", config, {"bos_token_id": 256, "eos_token_id": [257, 258]})
    ref = AutoTokenizer.from_pretrained(str(tmp_path / "null"))
    assert tok.bos_token is None is ref.bos_token and tok.bos_token_id is None
    assert tok.eos_token == ref.eos_token == "</s>" and tok.eos_token_ids == {257, 258}
    assert tok.encode("hi") == ref("hi")["input_ids"] == tok.encode("hi", add_special_tokens=False)
    assert tok.special_tokens_map == ref.special_tokens_map

    bare = _bos_folder(tmp_path / "bare", None, {"bos_token_id": 256, "eos_token_id": 257})
    assert (bare.bos_token, bare.bos_token_id, bare.eos_token, bare.eos_token_ids) == ("<s>", 256, "</s>", {257})
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"bos_token_id": 258, "eos_token_id": 256}))
    from_model = _bos_folder(tmp_path / "model", None, {})
    assert (from_model.bos_token, from_model.eos_token) == ("<pad>", "<s>")


def test_a_rendered_chat_gets_no_second_bos(toks):
    """generate()/stream_generate() encode a prompt through _encode: BOS is added to plain text only."""
    from mlxmodels.generate import _encode

    tok = toks["llama3"]
    assert tok.bos_token == "<|begin_of_text|>"
    chat = tok.apply_chat_template(MESSAGES)
    assert chat.startswith(tok.bos_token)
    assert _encode(tok, chat).tolist() == tok.encode(chat, add_special_tokens=False)
    assert _encode(tok, chat).tolist().count(tok.bos_token_id) == 1
    assert _encode(tok, "plain text").tolist() == tok.encode("plain text") and tok.encode("x")[0] == tok.bos_token_id
    assert _encode(toks["chatml"], "x").tolist() == toks["chatml"].encode("x")  # no BOS at all: nothing changes


# Meta's Llama 3.1+ special tokens (meta-llama/llama-models, models/llama3/tokenizer.py), as the
# added_tokens_decoder of Llama 3.1's tokenizer_config.json names them.
LLAMA31_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>",
                    "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>"]
LLAMA31_SPECIALS += [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(LLAMA31_SPECIALS))]


def _added_tokens(names: list[str], first: int) -> dict:
    return {str(first + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": True} for i, t in enumerate(names)}


def test_llama31_special_tokens_from_tokenizer_config(tmp_path, folders):
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = folders["tiktoken"] / "original" / "tokenizer.model"
    n = len(ranks.read_text().splitlines())
    (tmp_path / "original").mkdir()
    shutil.copy(ranks, tmp_path / "original" / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": _added_tokens(LLAMA31_SPECIALS, n), "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>"}))
    tok = load_tokenizer(tmp_path)
    for token in ("<|python_tag|>", "<|eom_id|>", "<|finetune_right_pad_id|>", "<|step_id|>"):
        assert tok.encode(f"a{token}b", add_special_tokens=False)[1:-1] == [n + LLAMA31_SPECIALS.index(token)]
    assert tok.eos_token == "<|eot_id|>" and tok.eos_token_ids == {n + 1, n + 8, n + 9}  # eom stops a tool call
    ref = TikTokenConverter(str(ranks), extra_special_tokens=LLAMA31_SPECIALS).converted()
    for text in TEXTS + ["<|python_tag|>search(q)<|eom_id|><|start_header_id|>ipython<|end_header_id|>"]:
        assert tok.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False).ids
    # Without tokenizer_config.json the Llama 3.0 names stand (test_tiktoken_layout).
    assert load_tokenizer(folders["tiktoken"]).token_to_id("<|python_tag|>") is None


def _kimi_ranks(lines: str, total: int) -> str:
    """A tiktoken.model of `total` ranks: a small BPE's, then tokens no merge can form (they start with 0xF8, a
    byte UTF-8 never has), so encoding follows the small BPE while ids number as in Kimi K2's 163,584 ranks."""
    rows = lines.splitlines()
    fill = (b"\xf8" + i.to_bytes(4, "big") for i in range(total - len(rows)))
    return "\n".join(rows + [f"{base64.b64encode(t).decode()} {len(rows) + k}" for k, t in enumerate(fill)]) + "\n"


@pytest.fixture(scope="module")
def kimi(tmp_path_factory, folders):
    folder = tmp_path_factory.mktemp("kimi")
    shutil.copy(DATA / "kite-kimi-layout" / "tokenizer_config.json", folder)
    lines = (folders["tiktoken"] / "original" / "tokenizer.model").read_text()
    (folder / "tiktoken.model").write_text(_kimi_ranks(lines, 163584))
    (folder / "chat_template.jinja").write_bytes((DATA.parent / "templates" / "Kimi-K2-Instruct.jinja").read_bytes())
    return folder


def test_kimi_layout(kimi):
    """Kimi K2: tiktoken.model, 256 special ids after the ranks named by added_tokens_decoder (the rest
    <|reserved_token_{id}|>), its own split pattern, no BOS on encode (tokenization_kimi.py adds none)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from mlxmodels.tokenizer import KIMI

    tok = load_tokenizer(kimi)
    names = {int(k): v["content"] for k, v in json.loads((kimi / "tokenizer_config.json").read_text())[
        "added_tokens_decoder"].items()}
    expected = [names.get(i, f"<|reserved_token_{i}|>") for i in range(163584, 163584 + 256)]
    assert [tok.token_to_id(t) for t in expected] == list(range(163584, 163584 + 256))
    assert tok.vocab_size == 163840 == max(names) + 1 and tok.max_token_id == 163839  # Kimi K2's vocab_size
    assert (tok.bos_token, tok.eos_token, tok.bos_token_id) == ("[BOS]", "[EOS]", 163584)
    assert tok.eos_token_ids == {163585, 163586}  # [EOS] and <|im_end|>, the end of every turn
    assert tok.encode("hi") == tok.encode("hi", add_special_tokens=False)
    ref = TikTokenConverter(str(kimi / "tiktoken.model"), pattern=KIMI.pattern,
                            extra_special_tokens=expected).converted()
    for text in TEXTS + ["Hello世界World's 12345", "<|im_user|>user<|im_middle|>hi<|im_end|>"]:
        ids = tok.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False).ids and tok.decode(ids) == text
    assert tok.encode("<|im_middle|>") == [163601]


def test_kimi_chat_sorts_tool_keys_as_its_tokenizer_does(kimi):
    """tokenization_kimi.py's apply_chat_template sorts the tools' keys (deep_sort_dict) before rendering."""
    from transformers.utils.chat_template_utils import render_jinja_template

    tok = load_tokenizer(kimi)
    messages = [{"role": "user", "content": "Wetter?"}]
    text = tok.apply_chat_template(messages, tools=TOOLS)
    assert text.startswith('<|im_system|>tool_declare<|im_middle|>[{"function": {"description": "Wetter')
    source = (kimi / "chat_template.jinja").read_text()
    rendered = render_jinja_template([messages], tools=[json.loads(json.dumps(TOOLS[0], sort_keys=True))],
                                     chat_template=source, add_generation_prompt=True, bos_token="[BOS]",
                                     eos_token="[EOS]", unk_token="[UNK]", pad_token="[PAD]")[0][0]
    assert text == rendered and tok.apply_chat_template(messages, tools=TOOLS, tokenize=True) == tok.encode(text)


def test_bad_added_tokens_decoder(tmp_path, folders):
    shutil.copytree(folders["tiktoken"], tmp_path / "f")
    (tmp_path / "f" / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {"x1": {}}}))
    with pytest.raises(TokenizerError, match=r'tokenizer_config\.json: added_tokens_decoder\["x1"\]'):
        load_tokenizer(tmp_path / "f")


def test_hub_download_takes_every_tokenizer_layout():
    from huggingface_hub.utils import filter_repo_objects

    from mlxmodels.load import HUB_META

    repo = ["tiktoken.model", "tokenization_kimi.py", "tokenizer.json", "tokenizer_config.json",
            "original/tokenizer.model", "chat_template.jinja", "model-00001-of-00002.safetensors", "README.md"]
    assert sorted(filter_repo_objects(repo, allow_patterns=HUB_META)) == sorted(
        ["tiktoken.model", "tokenizer.json", "tokenizer_config.json", "original/tokenizer.model",
         "chat_template.jinja"])
