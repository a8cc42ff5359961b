"""GGUF SentencePiece vocabularies (`tokenizer.ggml.model` "llama"): a real SentencePiece BPE model with byte
fallback, trained here with the sentencepiece library (as Llama 2's: identity normalization, digits split, whitespace
kept), written into GGUF metadata as llama.cpp's convert_hf_to_gguf writes it (pieces, scores, token types). Our ids
equal transformers' GGUF tokenizer and SentencePiece itself on multilingual text, code, emoji and whitespace runs;
decode inverts encode; control tokens stay whole; add_space_prefix and Gemma's spelling of space pieces are read."""

from __future__ import annotations

import io

import numpy as np
import pytest

from mlxmodels.formats.gguf import GGUFError, GGUFFile
from mlxmodels.formats.gguf_tokenizer import read_tokenizer

gguf = pytest.importorskip("gguf")
spm = pytest.importorskip("sentencepiece")

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


@pytest.mark.parametrize("pre", ["gpt-2", "olmo", "llama-bpe", "tekken", "gpt-4o", "llama4", "qwen2"])
def test_pre_tokenizers_with_gpt2_vocabulary(tmp_path, pre):
    """The real GPT-2 vocabulary and merges (tests/data) written with each tokenizer.ggml.pre: the split gives
    transformers' ids (its table agrees with llama.cpp's regexes for these names)."""
    import json
    from pathlib import Path

    data = json.loads((Path(__file__).parents[1] / "data/tokenizers/gpt2-kv260/tokenizer.json").read_text())
    vocab = sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])
    w = gguf.GGUFWriter(str(tmp_path / "bpe.gguf"), "llama")
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
    tok, theirs = ours(tmp_path / "bpe.gguf"), transformers_tokenizer(tmp_path / "bpe.gguf")
    for text in SPLIT_TEXT:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == theirs.encode(text, add_special_tokens=False).ids, (pre, text)
        assert tok.decode(ids) == text
