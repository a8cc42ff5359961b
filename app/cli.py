"""`mlxm`: the command-line entry point."""

import argparse
import sys


def cmd_generate(args):
    import mlxmodels

    model, tokenizer = mlxmodels.load(args.model, dtype=args.dtype)
    if tokenizer is None:
        raise ValueError(f"{args.model} has no tokenizer files; add tokenizer.json to the folder")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.chat:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    last = None
    for r in mlxmodels.stream_generate(model, tokenizer, prompt, max_tokens=args.max_tokens, temperature=args.temp,
                                       top_p=args.top_p, top_k=args.top_k, min_p=args.min_p, seed=args.seed):
        sys.stdout.write(r.text)
        sys.stdout.flush()
        last = r
    sys.stdout.write("\n")
    if last is not None and args.verbose:
        print(f"prompt: {last.prompt_tokens} tokens, {last.prompt_tps:.1f} tok/s; "
              f"generation: {last.generation_tokens} tokens, {last.generation_tps:.1f} tok/s; "
              f"peak memory {last.peak_memory:.2f} GB", file=sys.stderr)


def parser():
    p = argparse.ArgumentParser(prog="mlxm", description="Run the modern open-weights decoder family on MLX.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="stream a completion to stdout")
    g.add_argument("-m", "--model", required=True, help="local model folder or Hugging Face Hub id")
    g.add_argument("-p", "--prompt", required=True, help="the prompt, or - to read it from stdin")
    g.add_argument("--max-tokens", type=int, default=256)
    g.add_argument("--temp", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--dtype", default=None, help="compute dtype (default: float32 on CPU, the checkpoint's on GPU)")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    g.add_argument("-v", "--verbose", action="store_true", help="print speed and memory to stderr")
    g.set_defaults(func=cmd_generate)
    from app import convert_cmd
    convert_cmd.add_parser(sub)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    from mlxmodels.config import ModelError

    try:
        args.func(args)
    except (ModelError, ValueError, OSError) as e:
        print(f"mlxm: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
