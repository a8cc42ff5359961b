"""Tokenizers for model folders: text <-> ids, streaming detokenization, chat prompts.

Two backends cover the decoder family: Hugging Face `tokenizer.json` (run by `tokenizers`)
and tiktoken BPE files in two layouts, Meta's Llama 3 (`original/tokenizer.model`) and Moonshot's
Kimi K2 (`tiktoken.model`). One `Tokenizer` hides which one a folder has. transformers is the test oracle but is not imported here: loading stays
fast, and nothing from the folder is ever executed (the config's tokenizer class, auto_map
and trust_remote_code are ignored; only JSON, tiktoken text and Jinja templates are read).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mlxmodels import chat_messages, chat_template
from mlxmodels.config import read_side_config
from mlxmodels.formats import folder as files

# transformers' SPECIAL_TOKENS_ATTRIBUTES: what its special_tokens_map holds, and so what a chat template can read
_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
MAX_TOKENIZER_FILE = 512 << 20  # Gemma 3's tokenizer.json, among the largest, is 33 MB


class TokenizerError(ValueError):
    """A tokenizer folder or chat template we cannot use; the message says what to do."""


# ---------------------------------------------------------------- backends


class _HFBackend:
    """tokenizer.json via the `tokenizers` library (BPE, byte-level, SentencePiece-style, ...)."""

    eos_tokens: tuple[str, ...] = ()  # the folder's configs name them

    def __init__(self, path: Path):
        from tokenizers import Tokenizer as RustTokenizer

        try:
            self.tk = RustTokenizer.from_str(_read_bytes(path).decode("utf-8", errors="strict"))
        except Exception as e:  # tokenizers raises bare Exception for bad JSON and unknown types
            raise TokenizerError(
                f"cannot read {path}: {e}. The file is damaged or too new for tokenizers "
                f"(installed {_version('tokenizers')}): download it again or upgrade tokenizers."
            ) from None
        self._use()

    @classmethod
    def of(cls, tk) -> _HFBackend:
        """A backend over a `tokenizers.Tokenizer` built in memory (from a GGUF file's metadata)."""
        backend = cls.__new__(cls)
        backend.tk = tk
        backend._use()
        return backend

    def _use(self) -> None:
        # A truncation or padding block saved in tokenizer.json (save_pretrained after a padded batch writes one)
        # would silently cut or pad every prompt; transformers ignores it unless asked, and so do we.
        self.tk.no_truncation()
        self.tk.no_padding()
        self.vocab_size = self.tk.get_vocab_size(with_added_tokens=True)
        # ids can be sparse (an added token numbered past the vocabulary): the largest is what an embedding must hold
        self.max_id = max(self.tk.get_vocab(with_added_tokens=True).values(), default=-1)

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.tk.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.tk.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tk.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.tk.id_to_token(token_id)

    def set_bos_eos(self, bos: str | None, eos: str | None) -> None:
        """Add BOS/EOS on encode, for a tokenizer.json without a post-processor.

        transformers 5 then adds nothing; transformers 4 (which wrote such files) followed the
        config's add_bos_token/add_eos_token, as the model was trained, so we do too.
        """
        from tokenizers.processors import TemplateProcessing

        bos, eos = (t if t and self.tk.token_to_id(t) is not None else None for t in (bos, eos))
        single = " ".join(t for t in (bos, "$A", eos) if t)
        specials = [(t, self.tk.token_to_id(t)) for t in (bos, eos) if t]
        self.tk.post_processor = TemplateProcessing(single=single, special_tokens=specials)


# Meta's llama3 tokenizer.py: the split pattern, and 256 special tokens numbered after the BPE ranks (Llama 3.0's
# names; Llama 3.1+ renamed some reserved slots, e.g. <|python_tag|>, which their tokenizer_config.json names).
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>",
    "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
    "<|start_header_id|>", "<|end_header_id|>",
    "<|reserved_special_token_4|>", "<|eot_id|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(5, 256 - 5)]

# Moonshot's tokenization_kimi.py (Kimi K2; remote code we never run): its split pattern, and 256 special ids after
# the 163,584 ranks (up to config.json's vocab_size 163,840), named by tokenizer_config.json's added_tokens_decoder,
# the rest "<|reserved_token_{id}|>".
_KIMI_PATTERN = "|".join((
    r"""[\p{Han}]+""",
    (r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+"""
     r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""),
    (r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*"""
     r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""),
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
))


@dataclass(frozen=True)
class TiktokenLayout:
    """How a family's tiktoken file is read: its split pattern, how many special ids follow the BPE ranks and
    their names when the folder's tokenizer_config.json names none, BOS on encode, its end-of-turn tokens."""

    name: str
    pattern: str
    count: int
    default_name: Callable[[int, int], str]  # (index after the ranks, id) -> name
    bos: str | None  # prepended by encode(add_special_tokens=True)
    eos: tuple[str, ...]  # stop generation (besides the configs' EOS)
    template: tuple[str, str] | None  # (a built-in chat template, its name) for folders that have none


LLAMA3 = TiktokenLayout("Llama 3", _LLAMA3_PATTERN, 256, lambda i, _: _LLAMA3_SPECIALS[i], "<|begin_of_text|>",
                        ("<|end_of_text|>", "<|eot_id|>", "<|eom_id|>"),
                        (chat_template.LLAMA3_TEMPLATE, "the built-in Llama 3 chat template"))
KIMI = TiktokenLayout("Kimi K2", _KIMI_PATTERN, 256, lambda _, i: f"<|reserved_token_{i}|>", None,
                      ("<|im_end|>",), None)
# File name -> layout, in the order they are looked for. Meta's Hub repos keep the ranks in original/.
TIKTOKEN_FILES = {"tiktoken.model": KIMI, "tokenizer.model": LLAMA3, "original/tokenizer.model": LLAMA3}


class _TiktokenBackend:
    """tiktoken BPE ranks with a family's pattern and special tokens (numbered right after the ranks)."""

    def __init__(self, ranks: dict[bytes, int], path: Path, layout: TiktokenLayout, names: dict[int, str]):
        import tiktoken

        self.ranks = ranks
        self.layout, self.bos_token, self.eos_tokens = layout, layout.bos, layout.eos
        first = len(ranks)
        self.specials = {names.get(first + i) or layout.default_name(i, first + i): first + i
                         for i in range(layout.count)}
        self.special_ids = set(self.specials.values())
        self.names = {i: t for t, i in self.specials.items()}
        self.vocab_size = len(ranks) + len(self.specials)
        self.max_id = max(max(ranks.values(), default=-1), *self.specials.values())
        try:
            self.enc = tiktoken.Encoding(str(path), pat_str=layout.pattern, mergeable_ranks=ranks,
                                         special_tokens=self.specials)
        except ValueError as e:
            raise TokenizerError(f"{path} is not a valid tiktoken BPE file ({e}); download it again.") from None

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        # Special-token text is encoded as the special token, as Hugging Face tokenizers do.
        ids = self.enc.encode(text, allowed_special="all")
        return [self.specials[self.bos_token], *ids] if add_special_tokens and self.bos_token else ids

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        # Like tokenizers, skip ids it does not know (a model's padded vocabulary can sample them).
        ids = [i for i in ids if i < self.vocab_size and not (skip_special_tokens and i in self.special_ids)]
        return self.enc.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_to_id(self, token: str) -> int | None:
        return self.specials.get(token, self.ranks.get(token.encode()))

    def id_to_token(self, token_id: int) -> str | None:
        return self.names.get(token_id)


def _read_tiktoken(path: Path) -> dict[bytes, int] | None:
    """The ranks of a `<base64 token> <rank>` file; None when it is something else (a SentencePiece protobuf)."""
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(_read_bytes(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            if not ranks:  # already the first line is something else
                return None
            raise TokenizerError(f"{path} line {n} is not '<base64 token> <rank>': the file is damaged; "
                                 "download it again.") from None
    return ranks or None


# ---------------------------------------------------------------- the tokenizer


class Tokenizer:
    """Encode, decode, stream and render chat prompts, the same way for every backend."""

    def __init__(self, backend, *, special_tokens: dict[str, str], eos_token_ids: set[int],
                 chat_template: str | None, chat_template_file: str = "the chat template"):
        self._backend = backend
        self._special_tokens = special_tokens  # bos_token, eos_token, ... as text, for templates
        self.bos_token_id = self.token_to_id(special_tokens.get("bos_token"))
        self.eos_token_ids = eos_token_ids
        self.chat_template = chat_template
        self.chat_template_file = chat_template_file  # where it came from, for its error messages

    @property
    def bos_token(self) -> str | None:
        """BOS as text, as transformers has it (None for Qwen2.5, whose tokenizer_config.json says null)."""
        return self._special_tokens.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        """The EOS the tokenizer files name (generation may stop on more: eos_token_ids)."""
        return self._special_tokens.get("eos_token")

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """transformers' special_tokens_map: the named special tokens that are set, as text."""
        return dict(self._special_tokens)

    @property
    def vocab_size(self) -> int:
        """Every id the tokenizer can produce, added tokens included (transformers' len(tokenizer))."""
        return self._backend.vocab_size

    @property
    def max_token_id(self) -> int:
        """The largest id encode can produce (a model's embedding must have more rows than this)."""
        return self._backend.max_id

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    def to_json(self) -> str | None:
        """The tokenizer.json text of a `tokenizers` vocabulary (what `mlxm convert` writes for a GGUF source,
        whose vocabulary was built in memory); None for a tiktoken one, which has no such file."""
        tk = getattr(self._backend, "tk", None)
        return None if tk is None else tk.to_str(pretty=True)

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self._backend.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._backend.encode(text, add_special_tokens)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._backend.decode(list(ids), skip_special_tokens)

    def detokenizer(self, skip_special_tokens: bool = False) -> StreamingDetokenizer:
        return StreamingDetokenizer(lambda ids: self._backend.decode(ids, skip_special_tokens))

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tokenize: bool = False, tools: list[dict] | None = None,
                            documents: list[dict] | None = None, **kwargs) -> str | list[int]:
        """The prompt text (or its ids) for `messages`; extra kwargs (enable_thinking=, ...) reach the template.

        The template sees what transformers' apply_chat_template gives it (chat_messages: plain data, keys that
        are None dropped, reasoning under each name templates read; the special tokens, then the kwargs), and ids
        are encoded without adding BOS again (the template writes it).
        """
        if self.chat_template is None:
            raise TokenizerError("this model has no chat template (none in tokenizer_config.json, "
                                 "chat_template.jinja or chat_template.json): prompt it with plain text.")
        try:
            context = chat_messages.prepare(messages, tools, documents, **{**self._special_tokens, **kwargs})
        except chat_messages.MessagesInvalid as e:
            raise TokenizerError(f"cannot render the chat: {e}") from None
        if context["tools"] is not None and getattr(self._backend, "layout", None) is KIMI:
            context["tools"] = _sorted_keys(context["tools"])  # tokenization_kimi.py sorts them, as it was trained
        try:
            text = chat_template.render(self.chat_template, self.chat_template_file,
                                        add_generation_prompt=add_generation_prompt, **context)
        except chat_template.TemplateFailed as e:  # syntax, raise_exception(), sandbox, budget, type errors
            raise TokenizerError(str(e)) from None
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _sorted_keys(value):
    """Kimi's deep_sort_dict: every dict's keys in sorted order, at any depth."""
    if isinstance(value, dict):
        return {k: _sorted_keys(v) for k, v in sorted(value.items(), key=lambda item: str(item[0]))}
    if isinstance(value, list):
        return [_sorted_keys(v) for v in value]
    return value


class StreamingDetokenizer:
    """Turns generated ids into text as they arrive, never emitting half a character.

    Decoding token by token is wrong twice over: byte-level BPE splits characters across tokens,
    and SentencePiece decoders drop the leading space of whichever token comes first. So each step
    decodes a short window, `context` tokens whose text is already out plus the pending ones, and
    emits what the pending ones add. Text ending in U+FFFD waits for the bytes that complete it.
    The window restarts after each emission, so the cost per token stays constant, and the pieces
    add up to decode(all ids). (One exception, on broken UTF-8 only: tokenizers' ByteFallback decoder
    turns a whole run of byte tokens into U+FFFDs when the run is invalid, valid bytes included; the
    stream has already shown those valid bytes.)
    """

    def __init__(self, decode: Callable[[list[int]], str]):
        self._decode = decode
        self._tokens: list[int] = []  # context tokens, then pending ones
        self._context = 0
        self._context_text = ""
        self._text = ""

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return self._text

    def add_token(self, token_id: int) -> str:
        """The newly completed text (may be "")."""
        self._tokens.append(token_id)
        text = self._decode(self._tokens)
        if text.endswith("\ufffd") or len(text) <= len(self._context_text):
            return ""
        return self._emit(text)

    def finalize(self) -> str:
        """Whatever is still pending, incomplete characters included (as U+FFFD)."""
        if len(self._tokens) == self._context:
            return ""
        return self._emit(self._decode(self._tokens))

    def _emit(self, text: str) -> str:
        piece = text[len(self._context_text) :]
        self._tokens = self._tokens[self._context :]
        self._context = len(self._tokens)
        self._context_text = self._decode(self._tokens)
        self._text += piece
        return piece


# ---------------------------------------------------------------- loading


def load_tokenizer(folder: Path | str) -> Tokenizer | None:
    """The tokenizer of a model folder; None if the folder has no tokenizer files at all."""
    folder = Path(folder)
    tokenizer_config = _read_json(folder, "tokenizer_config.json")
    config = {**_read_json(folder, "special_tokens_map.json"), **tokenizer_config}
    tiktoken_files = [(files.member(folder, n), layout) for n, layout in TIKTOKEN_FILES.items()
                      if files.exists(folder, n)]
    special = {name: t for name in _SPECIAL_NAMES if (t := _token_text(config.get(name))) is not None}
    default_template = None

    if files.exists(folder, "tokenizer.json"):
        backend = _HFBackend(files.member(folder, "tokenizer.json"))
        if backend.tk.post_processor is None:  # else it decides, as in transformers 5
            backend.set_bos_eos(special.get("bos_token") if config.get("add_bos_token") else None,
                                special.get("eos_token") if config.get("add_eos_token") else None)
    elif tiktoken_files:
        read = ((path, layout, _read_tiktoken(path)) for path, layout in tiktoken_files)
        path, layout, ranks = next(((p, lay, r) for p, lay, r in read if r is not None), (None, None, None))
        if ranks is None:
            raise TokenizerError(f"{tiktoken_files[0][0]} is a SentencePiece model, which mlxmodels does not read: "
                                 "provide tokenizer.json (e.g. save the tokenizer with transformers' "
                                 "save_pretrained, or download it from the model's Hub repo).")
        names = _added_token_names(tokenizer_config.get("added_tokens_decoder"), folder)
        backend = _TiktokenBackend(ranks, path, layout, names)
        for name, token in (("bos_token", layout.bos), ("eos_token", layout.eos[0])):
            if name not in config and token:  # the config decides, a null included
                special[name] = token
        default_template = layout.template
    elif files.exists(folder, "tokenizer_config.json"):
        raise TokenizerError(f"{folder} has tokenizer_config.json but no tokenizer.json: add the model's "
                             "tokenizer.json (download it from the model's Hub repo).")
    else:
        return None

    # BOS and EOS come from the tokenizer's files first, where a null counts (Qwen2.5 has no BOS); only a folder
    # whose tokenizer files do not name them takes them from generation_config.json, then config.json.
    generation = _read_json(folder, "generation_config.json")
    model = _read_json(folder, "config.json")
    for name in ("bos_token", "eos_token"):
        ids = _ids(generation.get(f"{name}_id")) or _ids(model.get(f"{name}_id"))
        token = backend.id_to_token(min(ids)) if ids and name not in config and name not in special else None
        if token is not None:
            special[name] = token

    eos = {backend.token_to_id(t) for t in (special.get("eos_token"), *backend.eos_tokens) if t}
    for cfg in (generation, model, model.get("text_config") or {}):
        eos |= _ids(cfg.get("eos_token_id"))
    eos.discard(None)

    template, origin = _read_template(folder, config) or default_template or (None, "the chat template")
    return Tokenizer(backend, special_tokens=special, eos_token_ids=eos, chat_template=template,
                     chat_template_file=origin)


def tokenizer_from(tk, *, special_tokens: dict[str, str], eos_token_ids: set[int], bos: str | None,
                   eos: str | None, chat_template: str | None, chat_template_file: str) -> Tokenizer:
    """A Tokenizer over a `tokenizers.Tokenizer` built elsewhere (formats.gguf_tokenizer), adding `bos`/`eos`
    on encode when given."""
    backend = _HFBackend.of(tk)
    backend.set_bos_eos(bos, eos)
    return Tokenizer(backend, special_tokens=special_tokens, eos_token_ids=eos_token_ids,
                     chat_template=chat_template, chat_template_file=chat_template_file)


def _added_token_names(decoder, folder: Path) -> dict[int, str]:
    """tokenizer_config.json's added_tokens_decoder ({"128010": {"content": "<|python_tag|>", ...}}) as id -> text."""
    names = {}
    for key, entry in (decoder or {}).items():
        content = entry.get("content") if isinstance(entry, dict) else None
        if not (key.isascii() and key.isdigit() and len(key) < 10 and isinstance(content, str) and content):
            raise TokenizerError(f"{folder / 'tokenizer_config.json'}: added_tokens_decoder[{json.dumps(key)}] is not "
                                 "a token id with a 'content' text; fix the file or download it again.")
        names[int(key)] = content
    return names


def _read_template(folder: Path, config: dict) -> tuple[str, str] | None:
    """The default chat template and its file: chat_template.jinja, chat_template.json, tokenizer_config.json."""
    if files.exists(folder, "chat_template.jinja"):
        path = files.member(folder, "chat_template.jinja")
        return _read_bytes(path).decode("utf-8", errors="replace"), str(path)
    template, origin = _read_json(folder, "chat_template.json").get("chat_template"), "chat_template.json"
    if not template:
        template, origin = config.get("chat_template"), "tokenizer_config.json"
    if isinstance(template, list):  # [{"name": ..., "template": ...}]: the one named "default", else the first
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return (template, str(folder / origin)) if isinstance(template, str) and template else None


def _token_text(value) -> str | None:
    """Special tokens are saved as text or as {"content": text, ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _ids(value) -> set[int]:
    """eos_token_id-style values: an int, a list of ints, or null."""
    values = value if isinstance(value, list) else [value]
    return {v for v in values if isinstance(v, int) and not isinstance(v, bool)}


def _read_bytes(path: Path) -> bytes:
    return files.read_bytes(path, MAX_TOKENIZER_FILE)


def _read_json(folder: Path, name: str) -> dict:
    """A JSON object file of the folder, {} if absent; a damaged, misplaced or mistyped file is an error naming it."""
    return read_side_config(folder, name)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
