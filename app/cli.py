"""`mlxm`: the command-line entry point (chat, generate, serve, convert, bench, info, doctor, ls, rm).

User mistakes (a missing folder, an unknown model type, a bad flag value) print one line, `mlxm: error: ...`, and
exit non-zero: 2 for a bad command line, 1 for anything wrong with the model or the files. Tracebacks are kept
for our own bugs.
"""

from __future__ import annotations

import argparse
import os
import sys

from app.flags import (at_least, min_p_float, non_empty, non_negative_float, non_negative_int, penalty_float,
                       port_int, positive_int, seed_int, template_kwargs_json, unit_float)

EPILOG_MODEL = ("-m takes a local model folder (Hugging Face or mlx-lm layout) or a Hugging Face Hub id such as "
                "Qwen/Qwen3-0.6B (downloaded once into the Hugging Face cache). Without -m the small default model "
                "shipped with mlxmodels is used.")


class Parser(argparse.ArgumentParser):
    """argparse that reports a mistake in one line (no usage dump) and exits 2."""

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


class Version(argparse.Action):
    """`mlxm --version`: ours and MLX's (what a bug report needs first; `mlxm doctor` tells the rest)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        import mlx.core as mx

        from app.doctor import _ours

        print(f"mlxm (mlxmodels) {_ours()}, MLX {mx.__version__}")
        parser.exit()


def add_model(p, dtype=True):
    p.add_argument("-m", "--model", default=None, metavar="MODEL",
                   help="local model folder or Hugging Face Hub id (default: the built-in small model)")
    if dtype:
        p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                       help="compute dtype (default: the checkpoint's; on the CPU backend float32 when the weights are "
                            "quantized or OpenBLAS is loaded, as 16-bit is slower there)")


def add_adapter(p):
    p.add_argument("--adapter-path", default=None, metavar="DIR",
                   help="LoRA/DoRA adapters trained by mlx_lm.lora (its adapter_config.json and adapters.safetensors), "
                        "applied on the fly; `mlxm convert --adapter-path` fuses them instead")


def add_kv_bits(p):
    p.add_argument("--kv-bits", type=int, choices=(4, 8), default=None,
                   help="store the KV cache quantized to 4 or 8 bits (default: the model's float dtype)")
    p.add_argument("--kv-group-size", type=int, choices=(32, 64, 128), default=64, metavar="{32,64,128}",
                   help="values sharing one scale and bias in the quantized KV cache (default 64)")


def add_quantized_kv_start(p):
    p.add_argument("--quantized-kv-start", type=non_negative_int, default=0, metavar="N",
                   help="with --kv-bits: keep the KV cache float until it holds N tokens, then quantize it "
                        "(default 0: from the first token; mlx-lm's default is 5000)")


def kv_options(args) -> dict:
    """make_cache's KV quantization options from --kv-bits, --kv-group-size, --quantized-kv-start ({}: float KV)."""
    if args.quantized_kv_start and not args.kv_bits:
        raise ValueError("--quantized-kv-start says when --kv-bits starts quantizing the KV cache; add --kv-bits or "
                         "drop it")
    if not args.kv_bits:
        return {}
    return dict(kv_bits=args.kv_bits, kv_group_size=args.kv_group_size, quantized_kv_start=args.quantized_kv_start)


def add_sampling(p, defaults_note=""):
    s = p.add_argument_group("sampling" + defaults_note)
    s.add_argument("--temp", type=non_negative_float, default=None, help="temperature (0: greedy)")
    s.add_argument("--top-p", type=unit_float, default=None, help="nucleus sampling (1: off)")
    s.add_argument("--top-k", type=non_negative_int, default=None, help="keep the k most likely tokens (0: off)")
    s.add_argument("--min-p", type=min_p_float, default=None, help="drop tokens below min_p x the best (0: off)")
    s.add_argument("--repetition-penalty", type=penalty_float, default=None, help="1: off")
    s.add_argument("--seed", type=seed_int, default=None, help="random seed, for reproducible sampling")


def sampling_of(args, defaults=None) -> dict:
    out = dict(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0)
    out.update(defaults or {})
    for flag, key in (("temp", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"), ("min_p", "min_p"),
                      ("repetition_penalty", "repetition_penalty")):
        if getattr(args, flag) is not None:
            out[key] = getattr(args, flag)
    out["seed"] = args.seed
    return out


def add_template_switches(p, what):
    t = p.add_argument_group("chat template switches" + what)
    t.add_argument("--think", action=argparse.BooleanOptionalAction, default=None,
                   help="let a thinking model (Qwen3, SmolLM3, ...) reason before it answers, or not: the "
                        "template's enable_thinking (default: the template's own default)")
    t.add_argument("--template-kwargs", type=template_kwargs_json, default=None, metavar="JSON",
                   help="other variables for the chat template, as a JSON object, "
                        """e.g. '{"reasoning_effort": "high"}'""")


def template_kwargs_of(args) -> dict:
    kwargs = dict(args.template_kwargs or {})
    if args.think is not None:
        kwargs["enable_thinking"] = args.think
    return kwargs


def use_color(stream) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


# ---------------------------------------------------------------- generate


def cmd_generate(args):
    import mlxmodels
    from mlxmodels.reasoning import Splitter, split_stream

    from app import model_arg
    from app.prompt import fit_context, read_prompt, utf8_arg

    prompt = read_prompt(args.prompt)
    if not prompt:
        raise ValueError("the prompt is empty" + (" (nothing on stdin)" if args.prompt == "-" else ""))
    for flag, value in [("--system", args.system), *(("--stop", s) for s in args.stop or ())]:
        utf8_arg(value or "", flag)
    switches = template_kwargs_of(args)
    needs_template = [flag for flag, given in (("--system", args.system), ("--template-kwargs", args.template_kwargs),
                                               ("--think/--no-think", args.think is not None)) if given]
    if needs_template and args.raw:
        raise ValueError(f"{needs_template[0]} is part of the chat template, which --raw leaves out; drop one")
    if args.prompt_cache and (needs_template or args.max_kv_size):
        flag = needs_template[0] if needs_template else "--max-kv-size"
        raise ValueError(f"{flag} belongs to the cached prompt: give it to `mlxm cache-prompt`, not with "
                         "--prompt-cache")
    if args.draft and (args.max_kv_size or args.prompt_cache):
        raise ValueError(f"{'--max-kv-size' if args.max_kv_size else '--prompt-cache'} cannot roll back the tokens "
                         "speculative decoding (--draft) rejects; drop one")
    run = None
    if args.parallel:
        from app import parallel

        if args.prompt_cache:
            raise ValueError("--prompt-cache holds one process's whole cache, which --parallel cannot split; drop one")
        run = parallel.start(args)  # before loading: a follower says nothing from here on
    model, tokenizer, folder = model_arg.load(args.model, args.dtype, args.adapter_path, parallel=args.parallel)
    if not tokenizer.has_chat_template and (needs_template or args.chat):
        raise ValueError(f"{needs_template[0] if needs_template else '--chat'} needs a chat template and "
                         f"{model_arg.display_name(args.model)} has none; prompt it with plain text")
    if args.prompt_cache and args.kv_bits:
        raise ValueError("--kv-bits does not apply with --prompt-cache (the file's cache is used as saved); drop one")
    cache, options = None, kv_options(args)
    if args.max_kv_size or options:  # rollback: the tokens a --draft step may reject
        cache = model.make_cache(args.num_draft if args.draft else 0, max_kv_size=args.max_kv_size, **options)
    if args.prompt_cache:  # the file holds the prompt's start: feed only what follows it
        from app.cache_prompt_cmd import resume

        cache, ids = resume(model, tokenizer, prompt, args.prompt_cache, args.raw)
    elif not args.raw and tokenizer.has_chat_template:  # as mlx-lm and Ollama do: the model sees a chat turn
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": prompt}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **switches)
        ids = tokenizer.encode(prompt, add_special_tokens=False)  # the template wrote BOS if the model wants one
    else:
        ids = tokenizer.encode(prompt)
    n_prompt = len(ids)
    cached = cache[0].offset if args.prompt_cache else 0
    ids, max_tokens = fit_context(ids, args.max_tokens, model_arg.context_limit(folder, args.context) - cached,
                                  args.truncate_prompt)
    draft = None
    if args.draft == "mtp":
        draft = "mtp"
    elif args.draft:
        draft, _, _ = model_arg.load(args.draft, args.dtype)
    sampling = sampling_of(args)
    sampler = progress = None
    if run is not None:  # every rank feeds rank 0's prompt and samples rank 0's tokens
        ids, sampling["seed"] = run.share(list(ids), sampling["seed"])
        sampler, progress = run.sampler(sampling), run.watchdog.pet
    stream = split_stream(mlxmodels.stream_generate(
        model, tokenizer, ids, max_tokens=max_tokens, stop=args.stop or None, draft=draft, num_draft=args.num_draft,
        cache=cache, sampler=sampler, progress=progress, **sampling), Splitter.for_prompt(tokenizer, prompt))
    last = None
    out, err = sys.stdout, sys.stderr
    dim = use_color(err)
    open_line = False  # reasoning was written to stderr and its line is not ended yet
    for r in stream:
        if run is not None:
            run.watchdog.pet()
        if r.reasoning and not args.hide_thinking:  # a thinking model's reasoning: stderr, dimmed in a terminal
            err.write(f"\x1b[2m{r.reasoning}\x1b[0m" if dim else r.reasoning)
            err.flush()
            open_line = not r.reasoning.endswith("\n")
        if r.answer:
            if open_line:  # the answer starts on a line of its own where both go to one terminal
                err.write("\n")
                open_line = False
            out.write(r.answer)
            out.flush()
        last = r
    if run is not None:
        run.close()
    if open_line:
        err.write("\n")
    if out.isatty():
        out.write("\n")
    if last is not None and args.verbose:
        line = (f"prompt: {last.prompt_tokens} tokens, {last.prompt_tps:.1f} tok/s; generation: "
                f"{last.generation_tokens} tokens, {last.generation_tps:.1f} tok/s; "
                f"peak memory {last.peak_memory:.2f} GB")
        if last.reasoning_tokens:
            line += f"; reasoning: {last.reasoning_tokens} tokens"
        if draft is not None:
            line += f"; drafts accepted {last.draft_accepted}/{last.draft_proposed}"
        if len(ids) < n_prompt:
            line += f"; the prompt's first {n_prompt - len(ids)} tokens were dropped (--truncate-prompt)"
        if use_color(sys.stderr):
            line = f"\x1b[2m{line}\x1b[0m"
        print(line, file=sys.stderr)


def add_generate(sub):
    g = sub.add_parser("generate", help="stream a completion to stdout",
                       description="Stream the model's reply to PROMPT to stdout (pipe-friendly: only the generated "
                                   "text, no colours when not a terminal). The prompt is sent as a chat turn, "
                                   "through the model's chat template, when it has one (--raw sends it as is, for "
                                   "a plain completion). A thinking model's reasoning (between "
                                   "<think> and </think>) goes to stderr, dimmed in a terminal; --hide-thinking "
                                   "drops it.", epilog=EPILOG_MODEL)
    add_model(g)
    add_adapter(g)
    g.add_argument("-p", "--prompt", required=True, help="the prompt, or - to read it from stdin")
    form = g.add_mutually_exclusive_group()
    form.add_argument("--raw", action="store_true",
                      help="send the prompt as is (default: wrapped in the model's chat template when it has one)")
    form.add_argument("--chat", action="store_true",
                      help="wrap the prompt in the chat template (the default; kept for older scripts)")
    g.add_argument("--system", "--system-prompt", default=None, help="system prompt (in the chat template)")
    g.add_argument("--max-tokens", type=positive_int, default=256,
                   help="most tokens to generate (default 256; generation also stops at the model's context length)")
    g.add_argument("--context", type=positive_int, default=None, metavar="TOKENS",
                   help="context limit in tokens, prompt and reply together (default: the model's maximum)")
    g.add_argument("--truncate-prompt", action="store_true",
                   help="a prompt too long for the model's context keeps its last tokens (as many as leave room "
                        "for --max-tokens, at least half the context) instead of being refused")
    g.add_argument("--stop", action="append", type=non_empty, default=None, metavar="TEXT",
                   help="stop at TEXT (repeatable)")
    g.add_argument("--hide-thinking", action="store_true",
                   help="do not show a thinking model's reasoning (stdout gets only the answer either way)")
    add_template_switches(g, " (not with --raw)")
    add_sampling(g, " (default: greedy)")
    g.add_argument("--draft", "--draft-model", default=None, metavar="mtp|MODEL",
                   help="speculative decoding: the model's own MTP module, or a small draft model (folder or Hub id)")
    g.add_argument("--num-draft", "--num-draft-tokens", type=positive_int, default=3,
                   help="most drafted tokens per step (default 3; fewer while drafts are rejected)")
    add_long_context(g)
    add_kv_bits(g)
    add_quantized_kv_start(g)
    g.add_argument("-v", "--verbose", action="store_true", help="print speed and memory to stderr")
    from app import parallel

    parallel.add_flags(g)
    g.set_defaults(func=cmd_generate)


def add_long_context(p):
    p.add_argument("--prompt-cache", "--prompt-cache-file", default=None, metavar="FILE",
                   help="start from a prompt-cache file (`mlxm cache-prompt`): its tokens are not fed again (chat: "
                        "for a chat whose prompt starts with them, e.g. a first message opening with the document)")
    add_max_kv_size(p)


def add_max_kv_size(p):
    p.add_argument("--max-kv-size", type=at_least(5), default=None, metavar="N",
                   help="bound the KV cache to N tokens per layer (attention sinks + recent window, as StreamingLLM; "
                        "changes the output past N tokens)")


# ---------------------------------------------------------------- chat


def cmd_chat(args):
    from app import model_arg
    from app.chat_store import TEMPLATE_KWARGS, Chat, ChatStore, Sampling

    run = None
    if args.parallel:
        from app import parallel, parallel_chat
        from app.chat_session import plain_stop

        if args.prompt_cache:
            raise ValueError("--prompt-cache holds one process's whole cache, which --parallel cannot split; drop one")
        run = parallel.start(args)  # before loading: a follower says nothing from here on
        if run.rank != 0:  # no terminal and no saved chats: it replays rank 0's turns
            model, tokenizer, _ = model_arg.load(args.model, args.dtype, args.adapter_path, parallel=args.parallel)
            options = {**({"max_kv_size": args.max_kv_size} if args.max_kv_size else {}), **kv_options(args)}
            return parallel_chat.follow(run, model, tokenizer, options, plain_stop(tokenizer))
    store = ChatStore()
    chat = store.load(args.open) if args.open is not None else None  # --open "" is a mistake, not "no chat"
    if sys.stderr.isatty():  # progress for a person; in a pipe, stderr keeps to errors
        print(f"loading {model_arg.display_name(args.model)} ...", file=sys.stderr)
    model, tokenizer, folder = model_arg.load(args.model, args.dtype, args.adapter_path, parallel=args.parallel)
    limit = model_arg.context_limit(folder, args.context)
    sampling = Sampling.from_dict({**sampling_of(args, model_arg.sampling_defaults(folder)),
                                   "max_tokens": args.max_tokens})
    if chat is None:
        switches = template_kwargs_of(args)
        chat = Chat(model=model_arg.display_name(args.model), system=args.system or "",
                    settings={**sampling.to_dict(), **({TEMPLATE_KWARGS: switches} if switches else {})})
    from app.tui import ChatApp, crash_report

    app = ChatApp(model, tokenizer, model_name=model_arg.display_name(args.model), context_limit=limit, store=store,
                  chat=chat)
    if args.max_kv_size:
        app.session.cache_options["max_kv_size"] = args.max_kv_size
    options = kv_options(args)
    if options:
        if args.prompt_cache:
            raise ValueError("--kv-bits does not apply with --prompt-cache (the file's cache is used as saved); "
                             "drop one")
        model.make_cache(**options)  # options refused here, in one line
        app.session.cache_options.update(options)
    if args.prompt_cache:
        from app.cache_prompt_cmd import load_for_chat

        app.session.preload(*load_for_chat(model, args.prompt_cache))
    app.load_options = {"dtype": args.dtype, "context": args.context}  # for the models switched to in the chat
    del model, tokenizer  # the app holds them: a model switch in the chat must be able to free this one
    if run is not None:  # rank 0 sends each turn to the others; a model switch is refused
        app.session.lead, app.model_loader = parallel_chat.Lead(run), parallel_chat.refuse_switch
    try:
        app.run()
    finally:
        if run is not None:
            app.session.lead.quit()
    if app.crash is not None:  # our bug: one line here, the traceback in a log file
        print(f"mlxm: error: {crash_report(app.crash)}", file=sys.stderr)
        sys.exit(1)


def add_chat(sub):
    c = sub.add_parser("chat", help="chat with a model in the terminal (Textual)",
                       description="Chat with a model in the terminal. Enter sends, Shift+Enter or Ctrl+J adds a "
                                   "line, Esc stops a reply, Ctrl+R regenerates, Ctrl+E edits your last message, "
                                   "Ctrl+N starts a new chat, Ctrl+O opens a saved one, Ctrl+T opens the settings "
                                   "(thinking on/off among them). A thinking model's reasoning shows above its "
                                   "reply, collapsed once the answer begins (click it to expand). "
                                   "Chats are saved in the user data folder ($MLXM_DATA_DIR overrides it).",
                       epilog=EPILOG_MODEL)
    add_model(c)
    add_adapter(c)
    c.add_argument("--system", "--system-prompt", default=None, help="system prompt for a new chat")
    c.add_argument("--max-tokens", type=positive_int, default=1024, help="longest reply in tokens (default 1024)")
    c.add_argument("--context", type=positive_int, default=None, metavar="TOKENS",
                   help="context limit in tokens (default: the model's maximum); the oldest turns are dropped past it")
    c.add_argument("--open", default=None, metavar="CHAT_ID", help="reopen a saved chat")
    add_template_switches(c, " (for a new chat; a reopened chat keeps its own, Ctrl+T changes them)")
    add_sampling(c, " (default: the model's generation_config.json, else greedy)")
    add_long_context(c)
    add_kv_bits(c)
    add_quantized_kv_start(c)
    from app import parallel

    parallel.add_flags(c)
    c.set_defaults(func=cmd_chat)


# ---------------------------------------------------------------- info and bench


def cmd_info(args):
    from app import info

    report = info.describe(args.model, args.dtype)
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    else:
        print(info.format_report(report))


def add_info(sub):
    i = sub.add_parser("info", help="what a model is: family, parameters, layer pattern, KV cache, memory",
                       description="Describe a model without loading its weights: family, total and active "
                                   "parameters, layer pattern, KV bytes per token, quantization and the memory "
                                   "needed to load it and to fill its context.", epilog=EPILOG_MODEL)
    add_model(i)
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_info)


def add_bench(sub):
    from app import bench_cmd

    p = bench_cmd.add_parser(sub, add_model)
    add_adapter(p)
    add_kv_bits(p)
    add_quantized_kv_start(p)
    add_max_kv_size(p)


# ---------------------------------------------------------------- serve


def cmd_serve(args):
    from app.serve import server

    server.run(args)


def add_serve(sub):
    s = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with continuous batching",
                       description="Serve the model over HTTP in OpenAI's API (/v1/chat/completions, /v1/completions, "
                                   "/v1/models, streaming or not, tools, logprobs), with /health and /metrics "
                                   "(Prometheus). Requests are batched as they come (continuous batching on a paged "
                                   "KV cache) and prompts sharing a prefix reuse its cached blocks. Ctrl+C or "
                                   "SIGTERM lets replies in flight finish for a few seconds, then stops.",
                       epilog=EPILOG_MODEL)
    add_model(s)
    add_adapter(s)
    add_kv_bits(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=port_int, default=8080, help="port to listen on (default 8080; 0: any free one)")
    s.add_argument("--max-batch", type=positive_int, default=8, metavar="N",
                   help="most sequences generated together (default 8)")
    s.add_argument("--max-queue", type=non_negative_int, default=64, metavar="N",
                   help="most requests waiting for a place in the batch; more get 429 (default 64)")
    s.add_argument("--api-key", type=non_empty, default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every request but /health")
    s.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                   help="prefill every prompt in full instead of reusing KV blocks cached for a shared prefix "
                        "(to measure what the prefix cache saves)")
    s.add_argument("--cors-origin", type=non_empty, action="append", default=[], metavar="ORIGIN",
                   help="let browser pages from ORIGIN (e.g. http://localhost:3000; repeatable; '*': any site) call "
                        "the API (default: none)")
    s.add_argument("--context", type=positive_int, default=None, metavar="TOKENS",
                   help="context per request in tokens, prompt and reply together (default: the model's maximum, "
                        "at most 8192)")
    from app import parallel

    parallel.add_flags(s)
    s.set_defaults(func=cmd_serve)


# ---------------------------------------------------------------- main


def parser():
    p = Parser(prog="mlxm", description="Run the modern open-weights decoder family on MLX. mlx-lm's flag "
                                        "spellings are accepted too (--system-prompt, --draft-model, "
                                        "--num-draft-tokens, --q-bits, --q-group-size, --hf-path, --mlx-path, "
                                        "--num-trials).")
    p.add_argument("--version", action=Version, help="print the versions of mlxmodels and MLX, and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    add_chat(sub)
    add_generate(sub)
    from app import convert_cmd

    convert_cmd.add_parser(sub)
    add_bench(sub)
    add_info(sub)
    from app import cache_prompt_cmd

    cache_prompt_cmd.add_parser(sub, add_model)
    add_serve(sub)
    from app import doctor

    doctor.add_parser(sub)
    from app import models_cmd

    models_cmd.add_parsers(sub)
    return p


def main(argv=None):
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl+C at any moment: importing, loading, generating
        # a new line first in a terminal, where the text so far (or the echoed ^C) ends mid-line
        print(("\n" if sys.stderr.isatty() else "") + "mlxm: interrupted", file=sys.stderr)
        return 130


def _main(argv):
    import mlxmodels  # noqa: F401  (first: on Linux it loads a fast BLAS, which must come before mlx.core)

    from app import mlx_lm_flags

    p = parser()
    try:
        argv = mlx_lm_flags.rewrite(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        p.error(str(e))
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help(sys.stderr)
        return 2
    if sys.stdout is None or sys.stdout.closed:  # `mlxm ... >&-`: there is nowhere to put the answer
        print("mlxm: error: stdout is closed; give the command somewhere to write (a file, a pipe, a terminal)",
              file=sys.stderr)
        return 1
    from mlxmodels import kernel_cache
    from mlxmodels.config import ModelError

    if kernel_cache.PROBLEM:
        print(f"mlxm: error: {kernel_cache.PROBLEM}", file=sys.stderr)
        return 1
    try:
        args.func(args)
        from app import models_cmd

        models_cmd.remember_run(args)  # convert's OUT and -m GGUF files, for `mlxm ls`
    except BrokenPipeError:  # `mlxm generate ... | head`: the reader left; stay quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ModelError, ValueError, OSError) as e:
        from app.parallel import say_error

        say_error(f"mlxm: error: {_one_line(e)}", e)  # under --parallel: rank 0 says what the ranks found together
        return 1
    except RuntimeError as e:  # MLX found a damaged library in its compiled-kernel cache; anything else is our bug
        from app.parallel import lost_rank, say_error

        if lost_rank(e):  # --parallel: MLX's backend saw another rank's connection close
            say_error(lost_rank(e), e)
            return 1
        if "shared library" not in str(e) and "load compiled function" not in str(e):
            raise
        print(f"mlxm: error: MLX's compiled-kernel cache holds a damaged library; delete the folder "
              f"{kernel_cache.cache_dir()} and run again", file=sys.stderr)
        return 1
    return 0


def _one_line(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError) and e.filename:
        e = OSError(f"{e.filename}: no such file or folder")
    if isinstance(e, OSError) and e.strerror and e.filename:
        e = OSError(f"{e.filename}: {e.strerror}")
    text = str(e) or e.__class__.__name__
    from app.chat_store import printable  # a crafted file name or template message must not drive the terminal

    return printable(" ".join(text.split()))


if __name__ == "__main__":
    sys.exit(main())
