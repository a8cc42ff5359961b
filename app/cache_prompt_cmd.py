"""`mlxm cache-prompt`: feed a long prompt once and save the KV cache, so `generate|chat --prompt-cache FILE` pays
only for what follows it (mlx-lm's cache_prompt).

With a chat template the cached prompt is the start of a user turn: the template's text before the user's message,
then the document. A resumed run appends its prompt to that same message and closes the turn with the template's
text after the message (as mlx-lm does), so the model sees one user turn: the document, then the question.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

MARK = "<mlxm-query>"  # stands for the user's text while the template is rendered around it


def read_text(arg: str) -> str:
    """-p: the text, - for stdin, or @FILE for a file's UTF-8 text."""
    from app.prompt import MAX_STDIN, read_prompt

    if not arg.startswith("@"):
        return read_prompt(arg)
    path = Path(arg[1:])
    try:
        if path.stat().st_size > MAX_STDIN:  # bounded: a prompt is far shorter, and a FIFO is refused by is_file
            raise ValueError(f"-p {arg}: {path} is over {MAX_STDIN >> 20} MB; a prompt is far shorter")
        if not path.is_file():
            raise ValueError(f"-p {arg}: {path} is not a file")
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"-p {arg}: cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"-p {arg}: {path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it first, "
                         "e.g. iconv -f latin1 -t utf-8") from None


def around_user_text(tokenizer, system=None, switches=None) -> tuple:
    """(template text before the user's message, text after it) for a one-turn chat."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": MARK}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **(switches or {}))
    at = text.find(MARK)
    if at < 0:
        raise ValueError("the model's chat template does not keep the user's text as given; use --raw")
    return text[:at], text[at + len(MARK):]


def resume(model, tokenizer, prompt: str, path: str, raw: bool):
    """(cache loaded from `path`, ids of `prompt` to feed after it)."""
    import mlxmodels

    cache, meta = mlxmodels.load_prompt_cache(path, model)
    user = meta.get("metadata", {})
    chat = user.get("chat") == "1" or (meta["source"] == "mlx-lm" and "chat_template" in user)
    if chat and not raw and tokenizer.has_chat_template:
        prompt = prompt + around_user_text(tokenizer)[1]
    return cache, tokenizer.encode(prompt, add_special_tokens=False)


def load_for_chat(model, path: str):
    """(cache, tokens) for ChatSession.preload: a chat reuses the file as far as its prompt starts with its tokens."""
    import mlxmodels

    cache, meta = mlxmodels.load_prompt_cache(path, model)
    if meta["tokens"] is None:
        raise ValueError(f"{path}: an mlx-lm prompt cache does not say which tokens it holds, which chat needs to "
                         "reuse it; use it with `mlxm generate --prompt-cache`, or make one with `mlxm cache-prompt`")
    return cache, meta["tokens"]


def cmd_cache_prompt(args):
    import mlxmodels
    from app import model_arg
    from mlxmodels.generate import prefill

    text = read_text(args.prompt)
    if not text:
        raise ValueError("the prompt is empty; give the text to cache with -p TEXT, -p @FILE or -p -")
    model, tokenizer, folder = model_arg.load(args.model, args.dtype)
    chat = tokenizer.has_chat_template and not args.raw
    if chat:
        ids = tokenizer.encode(around_user_text(tokenizer, args.system)[0] + text, add_special_tokens=False)
    elif args.system:
        raise ValueError("--system is part of the chat template, which --raw leaves out; drop one")
    else:
        ids = tokenizer.encode(text)
    context = model_arg.context_limit(folder, None)
    if len(ids) >= context:
        raise ValueError(f"the prompt is {len(ids):,} tokens and the model's context is {context:,}: shorten it")
    from app.cli import kv_options

    cache = model.make_cache(max_kv_size=args.max_kv_size, **kv_options(args))
    start = time.perf_counter()
    prefill(model, ids, cache)
    out = Path(args.output)
    partial = out.with_name(out.name + ".partial")  # a file that is there is always whole
    mlxmodels.save_prompt_cache(partial, cache, model=model, tokens=ids,
                                metadata={"chat": "1" if chat else "0", "model": model_arg.display_name(args.model)})
    os.replace(partial, out)
    print(f"cached {len(ids):,} tokens in {time.perf_counter() - start:.1f} s: {out} "
          f"({out.stat().st_size / 2 ** 20:.1f} MB)", file=sys.stderr)


def add_parser(sub, add_model):
    from app.flags import at_least

    p = sub.add_parser("cache-prompt", help="save the KV cache of a long prompt, to reuse with --prompt-cache",
                       description="Feed PROMPT (a document, a long system prompt) through the model once and save "
                                   "its KV cache to OUT. `mlxm generate|chat --prompt-cache OUT` then starts from it "
                                   "and pays only for the text that follows. With a chat template the cached text "
                                   "opens a user turn that the later prompt continues (--raw: plain text). A cache "
                                   "file works only with the model that made it.")
    add_model(p)
    p.add_argument("-p", "--prompt", required=True, help="the prompt: text, @FILE for a file's text, or - for stdin")
    p.add_argument("-o", "--output", "--prompt-cache-file", required=True, metavar="OUT",
                   help="the prompt-cache file to write (safetensors)")
    p.add_argument("--raw", action="store_true", help="cache the text as is, outside the chat template")
    p.add_argument("--system", "--system-prompt", default=None, help="system prompt (in the chat template)")
    p.add_argument("--max-kv-size", type=at_least(5), default=None, metavar="N",
                   help="bound the cache to N tokens per layer (attention sinks + recent window; changes the output "
                        "past N tokens)")
    from app.cli import add_kv_bits, add_quantized_kv_start  # chat's and generate's flags (cli is loaded by now)

    add_kv_bits(p)
    add_quantized_kv_start(p)
    p.set_defaults(func=cmd_cache_prompt)
