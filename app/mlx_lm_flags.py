"""mlx-lm's spellings of our convert and bench flags, accepted so a command copied from mlx-lm's docs runs as is.

(chat and generate declare theirs, --system-prompt, --draft-model and --num-draft-tokens, beside their own flags.)
Here the command line is rewritten before argparse reads it: mlx-lm's `--hf-path SRC --mlx-path OUT` become our
positional SRC and OUT, the rest become the flag of ours that means the same.
"""

from __future__ import annotations

from typing import List

RENAMED = {
    "convert": {"--q-bits": "--bits", "--q-group-size": "--group-size"},
    "bench": {"--num-trials": "--trials"},
}
POSITIONAL = {"convert": ("--hf-path", "--mlx-path")}  # in our positional order: SRC, OUT


def rewrite(argv: List[str]) -> List[str]:
    """argv with mlx-lm's spellings (`--flag VALUE` or `--flag=VALUE`) of the subcommand's flags replaced by ours;
    nothing after a `--` is touched, and a command without such flags comes back unchanged."""
    command = next((a for a in argv if not a.startswith("-")), None)
    renamed, positional = RENAMED.get(command, {}), POSITIONAL.get(command, ())
    if not renamed and not positional:
        return list(argv)
    out, moved, i = [], {}, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out += argv[i:]
            break
        name, eq, value = arg.partition("=")
        if name in renamed:
            out.append(renamed[name] + eq + value)
        elif name in positional:
            if not eq:  # the value is the next word (argparse reports a missing one)
                i += 1
                value = argv[i] if i < len(argv) else ""
            if name in moved:
                raise ValueError(f"{name} is given twice")
            moved[name] = value
        else:
            out.append(arg)
        i += 1
    if moved:
        missing = [name for name in positional if name not in moved]
        if missing:
            raise ValueError(f"{', '.join(moved)} needs {', '.join(missing)} too (or give both folders in order)")
        folders = [moved[name] for name in positional]
        out += folders if "--" in out else ["--", *folders]  # after --: a folder named -x stays a folder
    return out
