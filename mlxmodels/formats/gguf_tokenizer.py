"""A GGUF file's tokenizer, rebuilt from its metadata with the `tokenizers` library.

A GGUF carries no tokenizer.json: llama.cpp stores the vocabulary (`tokenizer.ggml.tokens`, `.token_type`), the
merges, the special token ids, add-BOS/EOS flags and the chat template as metadata, and names the text splitting
by `tokenizer.ggml.pre`. `tokenizer.ggml.model` "gpt2" is byte-level BPE, built here as transformers' GGUF loader
builds it (transformers/integrations/gguf/gguf_tokenizer_mapping.py): tokens re-spelled in the byte alphabet where
the file spells them in plain text, control tokens (type 3) added as special and user-defined ones (type 4) as
plain added tokens, so both stay whole. Unlike transformers, added tokens keep their text as written (as in the
model's tokenizer.json), so one spelled outside the byte alphabet, like DeepSeek's BOS, keeps its id and stays
whole. The split follows llama.cpp's pre-tokenizer of that name (llama-vocab.cpp), which is how the model's own
tokenizer.json splits; for "smollm" that is digits one by one before GPT-2's split (transformers applies GPT-2's
split alone, which differs only where digits follow two or more spaces). DeepSeek's names ("deepseek-llm" for V2,
"deepseek-coder", "deepseek-v3" for V3/R1) are several regexes applied in turn, as llama.cpp's lists and the
models' Sequence of Splits; "kimi-k2" is Kimi's tiktoken pattern (mlxmodels.tokenizer).
"""

from __future__ import annotations

from mlxmodels.tokenizer import KIMI, tokenizer_from

from .gguf import GGUFError, GGUFFile
from .gguf_spm import sentencepiece

CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
           r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_CONTRACTION = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
_UPPER, _LOWER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTION}"
          rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTION}"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# DeepSeek's tokenizer.json splits in several passes (a Sequence of Split(Regex, "Isolated")), each pass cutting the
# pieces the one before left; llama.cpp's llama-vocab.cpp keeps them as lists of regexes, copied here escaped (the
# letter class holds look-alikes, e.g. U+2126 OHM SIGN, that an editor's normalization would silently replace).
_DEEPSEEK_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"  # Han, U+0800-U+4E00, Hangul
_DEEPSEEK_LLM = ("[\r\n]",
                 ("\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
                 "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
                 "\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-"
                 "\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d"
                 "\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-"
                 "\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113"
                 "\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149"
                 "\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b"
                 "\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-"
                 "\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0"
                 "-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"),
                 "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+", "\\s+$", _DEEPSEEK_CJK, "\\p{N}+")
_DEEPSEEK_CODER = ("[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", _DEEPSEEK_CJK, "\\p{N}")
# V3 (and R1, V3.1): digits by three, then Han and kana runs, then a Qwen-like split of the rest
_DEEPSEEK_V3 = ("\\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
                ("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
                "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"))
# tokenizer.ggml.pre -> how text is split before BPE: "gpt2" (GPT-2's regex inside ByteLevel), "digits" (each
# digit alone, then GPT-2's regex), a regex of its own or a tuple of regexes applied in turn (then bytes mapped
# without GPT-2's regex). Kimi K2's GGUF ("kimi-k2") splits with its tiktoken pattern.
SPLITS = {"default": "gpt2", "gpt2": "gpt2", "smollm": "digits", "llama3": _LLAMA3, "llama-v3": _LLAMA3,
          "llama-bpe": _LLAMA3, "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2, "gpt-2": "gpt2", "olmo": "gpt2",
          "tekken": _TEKKEN, "gpt-4o": _GPT4O, "llama4": _GPT4O, "pixtral": _LLAMA3, "dbrx": _LLAMA3,
          "smaug-bpe": _LLAMA3, "falcon3": _LLAMA3, "deepseek-llm": _DEEPSEEK_LLM, "deepseek-coder": _DEEPSEEK_CODER,
          "deepseek-v3": _DEEPSEEK_V3, "kimi-k2": KIMI.pattern}
# Llama 3's and Tekken's splits, for which llama.cpp (llama-vocab.cpp) sets two defaults, as their tokenizer.json
# does: ignore_merges (a piece that is a whole token is taken as is, before any merge: Llama 3's " Việt" is one
# token its merges never reach) and add_bos where the file has no tokenizer.ggml.add_bos_token.
LLAMA3_DEFAULTS = {"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "tekken"}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the rest are shifted past 255."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def read_tokenizer(g: GGUFFile):
    """The file's Tokenizer (mlxmodels.tokenizer), or None when the file has no tokenizer metadata."""
    kind = g.get("tokenizer.ggml.model", str)
    if kind is None:
        return None
    if kind not in ("gpt2", "llama"):
        raise GGUFError(f"{g.path}: tokenizer.ggml.model {kind!r} is not read from GGUF yet (only byte-level BPE, "
                        "'gpt2', and SentencePiece BPE, 'llama'); use the model's Hugging Face folder instead")
    tokens = g.get("tokenizer.ggml.tokens", list)
    if not tokens or not all(isinstance(t, str) for t in tokens):
        raise GGUFError(f"{g.path}: 'tokenizer.ggml.tokens' is missing or not a list of strings; re-download it")
    tk = _byte_level(g, tokens) if kind == "gpt2" else _sentencepiece(g, tokens)
    _add_tokens(g, tk, tokens)
    special = {}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unknown_token_id"),
                      ("pad_token", "padding_token_id")):
        token_id = _token_id(g, key, len(tokens))
        if token_id is not None:
            special[name] = tokens[token_id]
    eos = {i for key in ("eos_token_id", "eot_token_id", "eom_token_id")
           if (i := _token_id(g, key, len(tokens))) is not None}
    # llama.cpp adds BOS to a SentencePiece vocabulary whose file does not say otherwise (so does transformers), and
    # to Llama 3's and Tekken's byte-level ones
    by_default = kind == "llama" or g.get("tokenizer.ggml.pre", str) in LLAMA3_DEFAULTS
    add_bos = g.get("tokenizer.ggml.add_bos_token", bool, by_default)
    add_eos = g.get("tokenizer.ggml.add_eos_token", bool, False)
    return tokenizer_from(tk, special_tokens=special, eos_token_ids=eos,
                          bos=special.get("bos_token") if add_bos else None,
                          eos=special.get("eos_token") if add_eos else None,
                          chat_template=g.get("tokenizer.chat_template", str),
                          chat_template_file=f"{g.path} (tokenizer.chat_template)")


def _token_id(g: GGUFFile, key: str, n: int):
    token_id = g.get(f"tokenizer.ggml.{key}", int)
    if token_id is not None and not 0 <= token_id < n:
        raise GGUFError(f"{g.path}: 'tokenizer.ggml.{key}' is {token_id}, outside the {n} tokens; re-download it")
    return token_id


def _merges(g: GGUFFile) -> list:
    merges = []
    for i, merge in enumerate(g.get("tokenizer.ggml.merges", list, [])):
        pair = merge.split(" ") if isinstance(merge, str) else ()
        if len(pair) != 2:
            raise GGUFError(f"{g.path}: tokenizer.ggml.merges[{i}] is {str(merge)[:40]!r}, not two tokens separated "
                            "by a space; re-download it")
        merges.append(tuple(pair))
    return merges


def _sentencepiece(g: GGUFFile, tokens: list):
    listed = _merges(g) if "tokenizer.ggml.merges" in g.metadata else None  # transformers takes listed merges as is
    scores = g.get("tokenizer.ggml.scores", list)
    if listed is None and (scores is None or len(scores) != len(tokens)
                           or not all(isinstance(s, (int, float)) for s in scores)):
        raise GGUFError(f"{g.path}: 'tokenizer.ggml.scores' is missing or not one number per token; re-download it")
    try:
        return sentencepiece(tokens, scores, g.get("general.architecture", str, ""),
                             g.get("tokenizer.ggml.add_space_prefix", bool, True), listed)
    except Exception as e:  # tokenizers raises bare Exception for a merge of unknown pieces
        raise GGUFError(f"{g.path}: the vocabulary does not form a SentencePiece tokenizer ({e}); "
                        "re-download it") from None


def _byte_level(g: GGUFFile, tokens: list):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    # Added tokens (control, user-defined) keep the text llama.cpp wrote, so that added whole they keep their ids:
    # DeepSeek's "<｜begin▁of▁sentence｜>" is spelled outside the byte alphabet.
    added = {i for i, k in enumerate(g.get("tokenizer.ggml.token_type", list, [])) if k in (CONTROL, USER_DEFINED)}
    vocab = {t if i in added or set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(tokens)}
    merges = _merges(g)
    pre = g.get("tokenizer.ggml.pre", str, "default")
    if pre not in SPLITS:
        raise GGUFError(f"{g.path}: tokenizer.ggml.pre {pre!r} is a text split mlxmodels does not know yet (known: "
                        f"{', '.join(SPLITS)}); use the model's Hugging Face folder instead")
    try:
        tk = Tokenizer(models.BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                                  ignore_merges=pre in LLAMA3_DEFAULTS))
    except Exception as e:  # tokenizers raises bare Exception for a merge of unknown tokens
        raise GGUFError(f"{g.path}: the vocabulary and merges do not form a BPE tokenizer ({e}); "
                        "re-download it") from None
    split = SPLITS[pre]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split in ("gpt2", "digits"))
    if split == "gpt2":
        tk.pre_tokenizer = byte_level
    elif split == "digits":
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        regexes = (split,) if isinstance(split, str) else split
        tk.pre_tokenizer = pre_tokenizers.Sequence([*(pre_tokenizers.Split(Regex(r), behavior="isolated")
                                                      for r in regexes), byte_level])
    tk.decoder = decoders.ByteLevel()
    return tk


def _add_tokens(g: GGUFFile, tk, tokens: list) -> None:
    """Control tokens (type 3) as special and user-defined ones (type 4) as plain added tokens, so both stay whole."""
    from tokenizers import AddedToken

    vocab = tk.get_vocab()
    types = g.get("tokenizer.ggml.token_type", list, [])
    control = [AddedToken(t, normalized=False, special=True) for t, k in zip(tokens, types) if k == CONTROL]
    user = [AddedToken(t, normalized=False, special=False) for t, k in zip(tokens, types)
            if k == USER_DEFINED and t in vocab]
    tk.add_special_tokens(control)
    tk.add_tokens(user)
