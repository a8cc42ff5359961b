"""A GGUF file's tokenizer, rebuilt from its metadata with the `tokenizers` library.

A GGUF carries no tokenizer.json: llama.cpp stores the vocabulary (`tokenizer.ggml.tokens`, `.token_type`), the
merges, the special token ids, add-BOS/EOS flags and the chat template as metadata, and names the text splitting
by `tokenizer.ggml.pre`. `tokenizer.ggml.model` "gpt2" is byte-level BPE, built here as transformers' GGUF loader
builds it (transformers/integrations/gguf/gguf_tokenizer_mapping.py): tokens re-spelled in the byte alphabet where
the file spells them in plain text, control tokens (type 3) added as special and user-defined ones (type 4) as
plain added tokens, so both stay whole. The split follows llama.cpp's pre-tokenizer of that name (llama-vocab.cpp),
which is how the model's own tokenizer.json splits; for "smollm" that is digits one by one before GPT-2's split
(transformers applies GPT-2's split alone, which differs only where digits follow two or more spaces).
"""

from __future__ import annotations

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
# tokenizer.ggml.pre -> how text is split before BPE: "gpt2" (GPT-2's regex inside ByteLevel), "digits" (each
# digit alone, then GPT-2's regex), or a regex of its own (then bytes mapped without GPT-2's regex)
SPLITS = {"default": "gpt2", "gpt2": "gpt2", "smollm": "digits", "llama3": _LLAMA3, "llama-v3": _LLAMA3,
          "llama-bpe": _LLAMA3, "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2, "gpt-2": "gpt2", "olmo": "gpt2",
          "tekken": _TEKKEN, "gpt-4o": _GPT4O, "llama4": _GPT4O, "pixtral": _LLAMA3, "dbrx": _LLAMA3,
          "smaug-bpe": _LLAMA3, "falcon3": _LLAMA3}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the rest are shifted past 255."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def read_tokenizer(g: GGUFFile):
    """The file's Tokenizer (mlxmodels.tokenizer), or None when the file has no tokenizer metadata."""
    from mlxmodels.tokenizer import tokenizer_from

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
    _add_tokens(g, tk, tokens, byte_level=kind == "gpt2")
    special = {}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unknown_token_id"),
                      ("pad_token", "padding_token_id")):
        token_id = _token_id(g, key, len(tokens))
        if token_id is not None:
            special[name] = tokens[token_id]
    eos = {i for key in ("eos_token_id", "eot_token_id", "eom_token_id")
           if (i := _token_id(g, key, len(tokens))) is not None}
    # llama.cpp adds BOS to a SentencePiece vocabulary whose file does not say otherwise (so does transformers)
    add_bos = g.get("tokenizer.ggml.add_bos_token", bool, kind == "llama")
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
    vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(tokens)}
    merges = _merges(g)
    try:
        tk = Tokenizer(models.BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    except Exception as e:  # tokenizers raises bare Exception for a merge of unknown tokens
        raise GGUFError(f"{g.path}: the vocabulary and merges do not form a BPE tokenizer ({e}); "
                        "re-download it") from None
    pre = g.get("tokenizer.ggml.pre", str, "default")
    if pre not in SPLITS:
        raise GGUFError(f"{g.path}: tokenizer.ggml.pre {pre!r} is a text split mlxmodels does not know yet (known: "
                        f"{', '.join(SPLITS)}); use the model's Hugging Face folder instead")
    split = SPLITS[pre]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split in ("gpt2", "digits"))
    if split == "gpt2":
        tk.pre_tokenizer = byte_level
    elif split == "digits":
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                    byte_level])
    tk.decoder = decoders.ByteLevel()
    return tk


def _add_tokens(g: GGUFFile, tk, tokens: list, byte_level: bool) -> None:
    """Control tokens (type 3) as special and user-defined ones (type 4) as plain added tokens, so both stay whole;
    in a byte-level vocabulary a control token spelled outside the byte alphabet is a llama.cpp mislabel."""
    from tokenizers import AddedToken

    alphabet = set(bytes_to_unicode().values()) if byte_level else None
    vocab = tk.get_vocab()
    types = g.get("tokenizer.ggml.token_type", list, [])
    control = [AddedToken(t, normalized=False, special=True) for t, k in zip(tokens, types)
               if k == CONTROL and (alphabet is None or set(t) <= alphabet)]
    user = [AddedToken(t, normalized=False, special=False) for t, k in zip(tokens, types)
            if k == USER_DEFINED and t in vocab]
    tk.add_special_tokens(control)
    tk.add_tokens(user)
