"""GGUF SentencePiece vocabularies (`tokenizer.ggml.model` "llama"): a real SentencePiece BPE model with byte
fallback, trained here with the sentencepiece library (as Llama 2's: identity normalization, digits split, whitespace
kept), written into GGUF metadata as llama.cpp's convert_hf_to_gguf writes it (pieces, scores, token types). Our ids
equal transformers' GGUF tokenizer and SentencePiece itself on multilingual text, code, emoji and whitespace runs;
decode inverts encode; control tokens stay whole; add_space_prefix and Gemma's spelling of space pieces are read."""

from __future__ import annotations

import io
import json
import lzma
from pathlib import Path

import numpy as np
import pytest

from mlxmodels.formats.gguf import GGUFError, GGUFFile
from mlxmodels.formats.gguf_tokenizer import read_tokenizer

gguf = pytest.importorskip("gguf")
spm = pytest.importorskip("sentencepiece")
DATA = Path(__file__).parents[1] / "data/tokenizers"

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!",
    "def add(a, b):\n    return a + b  # sum of 12 and 345\n\nfor i in range(10):\n    print(i ** 2)",
    "Le cœur a ses raisons que la raison ne connaît point. Über den Wolken muss die Freiheit grenzenlos sein.",
    "Быстрая коричневая лиса прыгает через ленивую собаку. 東京は日本の首都です。北京是中国的首都。",
    "El niño comió paella en España; the naïve café served crème brûlée and smörgåsbord.",
    "Numbers: 3.14159, 2,718 and 1e-9; dates 2024-05-31; emails name@example.com; URLs https://x.org/a?b=c",
]
TEXTS = [
    "Hello world",
    " leading space and  two   spaces",
    "Tabs\tand\nnewlines\n\n  indented",
    "def f(x):\n    return x * 2  # doubled, 12345 times",
    "日本語のテキストと中文混合 with English",
    "Emoji 🦙🚀 and rare ǅ ꙮ characters",
    "Ünïcödé ßtraße — “quotes” and 'apostrophes' in naïve text",
    "trailing whitespace   ",
    "",
    "▁ a literal lower-one-eighth block ▁▁",
]


@pytest.fixture(scope="module")
def model():
    """A SentencePiece BPE model as Llama 2's is trained (byte fallback, digits split, whitespace kept)."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=out, vocab_size=420, model_type="bpe", byte_fallback=True,
        split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, character_coverage=0.99, num_threads=1, minloglevel=2,
        user_defined_symbols=["<tool>"], control_symbols=["<|im_end|>"], bos_id=1, eos_id=2, unk_id=0)
    return spm.SentencePieceProcessor(model_proto=out.getvalue())


def write(path, sp, arch="llama", add_space_prefix=None, tokens=None):
    """The model's vocabulary as convert_hf_to_gguf's _set_vocab_sentencepiece writes it."""
    types = []
    for i in range(sp.vocab_size()):
        kind = gguf.TokenType.NORMAL
        if sp.IsUnknown(i):
            kind = gguf.TokenType.UNKNOWN
        elif sp.IsControl(i):
            kind = gguf.TokenType.CONTROL
        elif sp.IsUnused(i):
            kind = gguf.TokenType.UNUSED
        elif sp.IsByte(i):
            kind = gguf.TokenType.BYTE
        elif sp.IdToPiece(i) == "<tool>":
            kind = gguf.TokenType.USER_DEFINED
        types.append(kind)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens or [sp.IdToPiece(i) for i in range(sp.vocab_size())])
    w.add_token_scores([sp.GetScore(i) for i in range(sp.vocab_size())])
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    if add_space_prefix is not None:
        w.add_add_space_prefix(add_space_prefix)
    w.add_tensor("output_norm.weight", np.ones(8, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def transformers_tokenizer(path):
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        convert_gguf_tokenizer,
        get_gguf_tokenizer,
    )

    arch, tokenizer_dict, _ = get_gguf_tokenizer(str(path))
    return convert_gguf_tokenizer(arch, tokenizer_dict)[0]


def ours(path):
    g = GGUFFile(path)
    try:
        return read_tokenizer(g)
    finally:
        g.close()


def test_equal_to_sentencepiece_and_transformers(tmp_path, model):
    """SentencePiece's ids on every text; transformers' too, except where its Metaspace(prepend_scheme="first")
    adds no "▁" before text that starts with a space or "▁" (gguf_spm's docstring)."""
    path = write(tmp_path / "spm.gguf", model)
    tok, theirs = ours(path), transformers_tokenizer(path)
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == model.encode(text), text  # the model's own tokenizer
        assert tok.decode(ids) == model.decode(ids), text
        if not text.startswith((" ", "▁")):
            assert ids == theirs.encode(text, add_special_tokens=False).ids, text
            assert tok.decode(ids) == text
    assert [model.IdToPiece(i) for i in tok.encode(" hi", add_special_tokens=False)][0] == "▁▁"
    assert [model.IdToPiece(i) for i in tok.encode("🦙", add_special_tokens=False)] == \
        ["▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]


def test_special_tokens_and_bos(tmp_path, model):
    path = write(tmp_path / "spm.gguf", model)
    tok, theirs = ours(path), transformers_tokenizer(path)
    text = "Hi<|im_end|>there <tool>x"
    ids = tok.encode(text, add_special_tokens=False)
    assert model.PieceToId("<|im_end|>") in ids and model.PieceToId("<tool>") in ids
    # llama.cpp puts a space before each fragment after a special token, SentencePiece's prefix: "▁there", "▁x"
    end, tool = ids.index(model.PieceToId("<|im_end|>")), ids.index(model.PieceToId("<tool>"))
    assert ids[end + 1:tool] == model.encode("there ") and ids[tool + 1:] == model.encode("x")
    assert ids[:end] == model.encode("Hi") == theirs.encode("Hi", add_special_tokens=False).ids
    assert tok.encode("Hi", add_special_tokens=True)[0] == model.bos_id()  # no add_bos_token key: BOS is added
    assert tok.decode(ids, skip_special_tokens=True).startswith("Hi")


def test_add_space_prefix_false_is_followed(tmp_path, model):
    """llama.cpp reads add_space_prefix (transformers ignores it and always prefixes "▁"): a file that says false
    gets no prefix, as SentencePiece with add_dummy_prefix off."""
    tok = ours(write(tmp_path / "spm.gguf", model, add_space_prefix=False))
    ids = tok.encode("Hello world", add_special_tokens=False)
    assert [model.IdToPiece(i) for i in ids][0] != "▁Hello" and not model.IdToPiece(ids[0]).startswith("▁")
    assert tok.decode(ids) == "Hello world"


def test_gemma_space_pieces(tmp_path, model):
    """Gemma's files store pieces of spaces as real spaces and no prefix is added: as transformers' Gemma builder."""
    pieces = [model.IdToPiece(i) for i in range(model.vocab_size())]
    spaced = [" " * len(p) if p and set(p) == {"▁"} else p for p in pieces]
    assert spaced != pieces  # the vocabulary has pieces of spaces only
    path = write(tmp_path / "gemma.gguf", model, arch="gemma2", tokens=spaced)
    tok, theirs = ours(path), transformers_tokenizer(path)
    for text in TEXTS:
        assert tok.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False).ids, text


def test_scores_missing_is_refused(tmp_path, model):
    path = write(tmp_path / "spm.gguf", model)
    g = GGUFFile(path)
    del g.metadata["tokenizer.ggml.scores"]
    with pytest.raises(GGUFError, match="'tokenizer.ggml.scores' is missing"):
        read_tokenizer(g)
    g.close()


SPLIT_TEXT = ["Hello World's HTTPServer in camelCase and ALLCAPS don't", "1234567 digits 3.14 and 10,000",
              "café Übermäßig naïve ДАННЫЕ данные 日本語テキスト", "path/to/file.py\n\n   indented\r\n", "emoji 🦙🚀!!",
              "x++\n/y iPhone XMLHttpRequest McDonald's ÜberCool"]


def gpt2_gguf(path, pre):
    """The real GPT-2 vocabulary and merges (tests/data) written as a GGUF whose tokenizer.ggml.pre is `pre`."""
    data = json.loads((DATA / "gpt2-kv260/tokenizer.json").read_text())
    vocab = sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list([t for t, _ in vocab])
    w.add_token_merges(data["model"]["merges"])
    w.add_token_types([gguf.TokenType.CONTROL if t == "<|endoftext|>" else gguf.TokenType.NORMAL for t, _ in vocab])
    w.add_tensor("output_norm.weight", np.ones(8, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("pre", ["gpt-2", "olmo", "llama-bpe", "tekken", "gpt-4o", "llama4", "qwen2"])
def test_pre_tokenizers_with_gpt2_vocabulary(tmp_path, pre):
    """The real GPT-2 vocabulary and merges (tests/data) written with each tokenizer.ggml.pre: the split gives
    transformers' ids (its table agrees with llama.cpp's regexes for these names)."""
    path = gpt2_gguf(tmp_path / "bpe.gguf", pre)
    tok, theirs = ours(path), transformers_tokenizer(path)
    for text in SPLIT_TEXT:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == theirs.encode(text, add_special_tokens=False).ids, (pre, text)
        assert tok.decode(ids) == text


# DeepSeek V2/V3/R1 and Kimi K2 (architecture deepseek2). Text that tells the splits apart: CJK runs of each script,
# digit runs of one to eight, ASCII and full-width punctuation, symbols, CRLF and blank lines, trailing spaces.
MIXED = ["Hello world's HTTPServer, don't WE'LL camelCase ALLCAPS", "7 42 123 2024 31415 271828 1234567 98765432",
         "北京是中国的首都。東京はカタカナとひらがな、한국어 텍스트도 있어요!", "混合English和中文123个字，「引号」（括号）",
         "def f(x):\r\n    return x**2  # doubled\n\n\tindent\t\n", "price: $1,000.50 (≈ €920) 50% off!!!",
         "a+b=c <=> ~^|`",
         "emoji 🦙🚀✅ 😶‍🌫️ and ZWJ 👩‍💻; naïve café Ωμέγα Ελληνικά", "Привет мир Հայերեն trailing spaces   \n  \n",
         "path/to/file.py\n'quoted' \"double\" ...!?;: -- __init__ @decorator #tag", "full-width ＡＢＣ１２３！？ and ｱｲｳ",
         "look-alikes: 10 \u2126, 300 \u212a, \u1fbe", "x", ""]
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def llama_cpp_regexes(name: str) -> list[str]:
    """The regex list of LLAMA_VOCAB_PRE_TYPE_<name> in llama.cpp's llama-vocab.cpp (an excerpt kept in tests/data)."""
    import ast
    import re

    src = (DATA / "llama.cpp-vocab/llama-vocab.cpp.excerpt").read_text(encoding="utf-8")
    body = src[src.index(f"case LLAMA_VOCAB_PRE_TYPE_{name}:"):]
    body = body[body.index("{") + 1:body.index("};")]
    # C++ and Python agree on these literals' escapes (\\ \" \r \n)
    return [ast.literal_eval(lit) for lit in re.findall(r'^\s*("(?:[^"\\]|\\.)*"),\s*$', body, re.MULTILINE)]


def split_in_turn(regexes, text: str) -> list[str]:
    """llama.cpp's unicode_regex_split with the `regex` module: each regex cuts every piece into its matches and the
    text between them, in turn."""
    regex = pytest.importorskip("regex")
    pieces = [text]
    for pattern in regexes:
        compiled, cut = regex.compile(pattern), []
        for piece in pieces:
            at = 0
            for m in compiled.finditer(piece):
                cut += [part for part in (piece[at:m.start()], m.group()) if part]
                at = m.end()
            cut += [piece[at:]] if at < len(piece) else []
        pieces = cut
    return pieces


def our_split(tok, text: str) -> list[str]:
    """The pieces our pre-tokenizer gives, back from the byte alphabet to text."""
    from tokenizers import Tokenizer

    from mlxmodels.formats.gguf_tokenizer import bytes_to_unicode

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    pre = Tokenizer.from_str(tok.to_json()).pre_tokenizer
    return [bytes(byte_of[c] for c in piece).decode("utf-8") for piece, _ in pre.pre_tokenize_str(text)]


# llama.cpp's vocabulary-only GGUFs (tests/data/tokenizers/SOURCES.md) -> (BOS, EOS, whether BOS is added), as
# llama.cpp reads them: from the file, else its default (SentencePiece and Llama 3's split add BOS)
VOCABS = {"deepseek-coder": (32013, 32014, True), "deepseek-llm": (100000, 100001, True),
          "llama-bpe": (128000, 128001, True), "llama-spm": (1, 2, True), "qwen2": (151643, 151643, False),
          "gpt-2": (50256, 50256, False)}


def real_vocabulary(tmp_path, name):
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(lzma.decompress((DATA / f"llama.cpp-vocab/ggml-vocab-{name}.gguf.xz").read_bytes()))
    return ours(path)


@pytest.mark.parametrize("name", VOCABS)
def test_llama_cpp_real_vocabularies(tmp_path, name):
    """llama.cpp's vocabulary-only GGUFs of Llama 3 (llama-bpe), Llama 2 (llama-spm), Qwen2, GPT-2, deepseek-coder
    and deepseek-llm, and the ids each model's own tokenizer.json gave for llama.cpp's test texts (its .out files,
    made by convert_hf_to_gguf_update.py with transformers): ours are the same and decode back; BOS, EOS and
    add-BOS are the file's."""
    tok = real_vocabulary(tmp_path, name)
    texts = (DATA / "llama.cpp-vocab/ggml-vocab.gguf.inp").read_text(encoding="utf-8")
    texts = texts.split("\n__ggml_vocab_test__\n")
    expected = (DATA / f"llama.cpp-vocab/ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    assert len(texts) == len(expected) == 47
    for text, line in zip(texts, expected):
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == [int(i) for i in line.split()], (name, text)
        assert tok.decode(ids) == text
    bos, eos, add_bos = VOCABS[name]
    assert (tok.bos_token_id, tok.eos_token_ids) == (bos, {eos})
    hi = tok.encode("hi", add_special_tokens=False)
    assert tok.encode("hi", add_special_tokens=True) == ([bos] if add_bos else []) + hi
    # BOS and EOS stay whole in text (DeepSeek's are written outside the byte alphabet) and decode away as special
    ids = tok.encode(f"{tok.bos_token}hi{tok.eos_token}", add_special_tokens=False)
    assert (ids[0], ids[-1]) == (bos, eos)
    assert tok.decode([bos, *hi, eos], skip_special_tokens=True) == "hi"


def test_deepseek_coder_fim_tokens(tmp_path):
    tok = real_vocabulary(tmp_path, "deepseek-coder")
    assert tok.encode("a<｜fim▁hole｜>b", add_special_tokens=False)[1] == 32015
    assert tok.vocab_size == 32256


@pytest.mark.parametrize("pre, name", [("deepseek-llm", "DEEPSEEK_LLM"), ("deepseek-coder", "DEEPSEEK_CODER"),
                                       ("deepseek-v3", "DEEPSEEK3_LLM")])
def test_deepseek_splits_as_llama_cpp(tmp_path, pre, name):
    """Our split equals llama.cpp's regex list applied in turn (with the `regex` module) on mixed text, and would
    not if any one regex were GPT-2's; GPT-2's vocabulary under that name decodes back."""
    regexes = llama_cpp_regexes(name)
    tok = ours(gpt2_gguf(tmp_path / "bpe.gguf", pre))
    for text in MIXED:
        assert our_split(tok, text) == split_in_turn(regexes, text), (pre, text)
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    for k in range(len(regexes)):  # the texts tell each regex from GPT-2's
        swapped = [*regexes[:k], GPT2, *regexes[k + 1:]]
        assert any(split_in_turn(swapped, t) != split_in_turn(regexes, t) for t in MIXED), (pre, k)


def test_deepseek_v3_as_its_tokenizer_json(tmp_path):
    """DeepSeek-V3's own pre_tokenizer block (tests/data/tokenizers/deepseek-v3) on GPT-2's vocabulary gives our
    split and ids."""
    from tokenizers import Tokenizer

    tok = ours(gpt2_gguf(tmp_path / "bpe.gguf", "deepseek-v3"))
    spec = json.loads(tok.to_json())
    spec["pre_tokenizer"] = json.loads((DATA / "deepseek-v3/pre_tokenizer.json").read_text(encoding="utf-8"))
    theirs = Tokenizer.from_str(json.dumps(spec))
    for text in MIXED:
        assert [p for p, _ in theirs.pre_tokenizer.pre_tokenize_str(text)] == \
            [p for p, _ in Tokenizer.from_str(tok.to_json()).pre_tokenizer.pre_tokenize_str(text)], text
        assert tok.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False).ids, text


def test_kimi_k2_as_tiktoken(tmp_path):
    """Kimi K2 tokenizes with tiktoken and its own pattern (mlxmodels.tokenizer.KIMI): GPT-2's vocabulary as tiktoken
    ranks (r50k's ranks are GPT-2's ids) with that pattern gives our ids for a GGUF whose pre is "kimi-k2"."""
    import tiktoken

    from mlxmodels.formats.gguf_tokenizer import bytes_to_unicode
    from mlxmodels.tokenizer import KIMI

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    vocab = json.loads((DATA / "gpt2-kv260/tokenizer.json").read_text())["model"]["vocab"]
    ranks = {bytes(byte_of[c] for c in t): i for t, i in vocab.items() if t != "<|endoftext|>"}
    kimi = tiktoken.Encoding("kimi-k2-on-gpt2", pat_str=KIMI.pattern, mergeable_ranks=ranks, special_tokens={})
    tok = ours(gpt2_gguf(tmp_path / "bpe.gguf", "kimi-k2"))
    for text in MIXED:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == kimi.encode(text), text
        assert tok.decode(ids) == text
    gpt2 = tiktoken.Encoding("gpt2-pattern", pat_str=GPT2, mergeable_ranks=ranks, special_tokens={})
    assert any(gpt2.encode(t) != kimi.encode(t) for t in MIXED)  # the texts tell Kimi's pattern from GPT-2's
