"""A GGUF SentencePiece vocabulary (`tokenizer.ggml.model` "llama": Llama 2, Mistral, Mixtral, Gemma) as a
`tokenizers` BPE with byte fallback, built as transformers' GGUF loader builds it
(transformers/integrations/gguf/gguf_tokenizer_mapping.py: sentencepiece_tokenizer and gemma_tokenizer over
LlamaTokenizer/GemmaTokenizer), so ids are transformers' ids.

The file stores pieces as SentencePiece spells them (spaces as "▁", bytes as "<0xNN>"), a score per piece, and no
merges: SentencePiece BPE joins the adjacent pair whose joined piece scores highest, which is BPE with every split of
every piece as a merge, ranked by the joined piece's score (transformers' generate_merges, mirrored in `merges`).
Text gets "▁" for spaces and one "▁" in front; a character with no piece becomes its UTF-8 byte pieces.

Where transformers differs from SentencePiece and llama.cpp we follow those (the model's own tokenizer): (1) the
prefix "▁" is added to every text fragment, also one that starts with a space or follows a special token, as
SentencePiece's add_dummy_prefix, llama.cpp (a space before each fragment after a special token) and Llama 2's
tokenizer.json (normalizer Prepend + Replace) do; transformers' Metaspace(prepend_scheme="first") skips it there, so
" hi" is "▁hi" for it and "▁▁hi" for the model; (2) the prefix follows `tokenizer.ggml.add_space_prefix` (false in
some files), which transformers ignores. Gemma's files differ in two ways its builder undoes: pieces of spaces only
are stored as real spaces, and the merge order is the file order, not the score.
"""

from __future__ import annotations

SPACE = "\u2581"
GEMMA = ("gemma", "gemma2", "gemma3")


def sentencepiece(tokens: list, scores, arch: str, add_space_prefix: bool, listed=None):
    """The tokenizers.Tokenizer for a SentencePiece vocabulary (no added tokens yet); `listed`: the file's own
    merges, when it has them."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    if arch in GEMMA:
        tokens = [SPACE * len(t) if " " in t and not t.strip() else t for t in tokens]
        order = {t: -i for i, t in enumerate(tokens)}  # earlier in the file merges first
    else:
        order = dict(zip(tokens, scores or ()))
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab, merges(vocab, order) if listed is None else listed, fuse_unk=True, byte_fallback=True,
                     **({"unk_token": "<unk>"} if arch in GEMMA and "<unk>" in vocab else {}))
    tk = Tokenizer(bpe)
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if arch in GEMMA:  # spaces become "▁" and no prefix is added (GemmaTokenizer)
        tk.normalizer = normalizers.Replace(" ", SPACE)
        tk.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    elif add_space_prefix:  # "▁" before every text fragment, even one that starts with a space (Llama 2's own)
        tk.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
        steps.append(decoders.Strip(" ", left=1))
    else:
        tk.normalizer = normalizers.Replace(" ", SPACE)
    tk.decoder = decoders.Sequence(steps)
    return tk


def merges(vocab: dict, scores: dict) -> list:
    """Every split (left, right) of a piece into two pieces, best joined score first, then shorter left and right
    parts first; splits of one piece by the ids of their parts (transformers' generate_merges)."""
    out = []
    for piece, score in scores.items():
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        out.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    out.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in out]
