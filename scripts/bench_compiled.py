"""Compiled vs eager few-token steps (mlxmodels/parts/compiled.py) on the embedded default model.

Times a target forward of 1, 2 and 4 tokens and one MTP draft step, each evaluated on its own, with compiled
steps on and off taking turns call by call; prints medians and the ratio. Then times greedy decoding of the
held-out chat questions the model was evaluated on (train/data.py, 4 per task family) with `stream_generate`:
decode time after the first token, plain and with at most k MTP drafts a round (the default adaptive length),
and mlx-lm's plain decoding of the same folder in float32, taking turns on every question.

    python scripts/bench_compiled.py [--calls 300] [--trials 5]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import mlxmodels  # first: on Linux it loads OpenBLAS before mlx.core, which sets the compute dtype policy
import mlx.core as mx
from mlxmodels.assets import default_model_path
from mlxmodels.generate import stream_generate
from mlxmodels.parts import compiled

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train.data import heldout_set  # noqa: E402  (the dev-only training package, for its question generator)


def step_costs(model, calls: int) -> dict:
    cache, mtp_cache = model.make_cache(rollback=4), model.make_mtp_cache(rollback=4)[0]
    mx.eval(model(mx.array([list(range(20))]), cache=cache))
    h = mx.zeros((1, 1, model.spec.hidden_size))

    def forward(T):
        mx.eval(model(mx.array([[5] * T]), cache=cache))
        for c in cache:
            c.trim(T)

    def mtp():
        mx.eval(model.mtp_step(0, mx.array([[5]]), h, mtp_cache)[1])
        mtp_cache.trim(1)

    steps = {"forward 1": lambda: forward(1), "forward 2": lambda: forward(2), "forward 4": lambda: forward(4),
             "MTP step": mtp}
    times = {(name, on): [] for name in steps for on in (False, True)}
    for _ in range(calls):
        for (name, on), ts in times.items():
            compiled.ENABLED = on
            t0 = time.perf_counter()
            steps[name]()
            ts.append(time.perf_counter() - t0)
    compiled.ENABLED = True
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def mlx_lm_steps(folder: Path, eos: set):
    """mlx-lm on the same folder in float32 (it drops the MTP weights): greedy token ids until EOS."""
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load_model

    model, _ = load_model(folder, strict=False)
    model.set_dtype(mx.float32)
    model.eval()

    def run(prompt):
        for token, _ in generate_step(mx.array(prompt), model, max_tokens=80, sampler=lambda x: mx.argmax(x, -1)):
            yield int(token)
            if int(token) in eos:
                return
    return run


def decode_ms_per_token(model, tokenizer, trials: int, with_mlx_lm: bool) -> dict:
    """Median decode ms per token (after the first) over the held-out questions; the settings take turns on every
    question. -> {setting: (ms per token, drafts accepted, drafts proposed)}"""
    ids = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
           for q in (r["question"] for r in heldout_set(4, seed=99))]

    def ours(**kw):
        def run(prompt):
            for r in stream_generate(model, tokenizer, prompt, max_tokens=80, **kw):
                stats[:] = [r.draft_accepted, r.draft_proposed]
                yield r.token
        return run

    stats = [0, 0]
    settings = {"plain": ours(), **{f"MTP k={k}": ours(draft="mtp", num_draft=k) for k in (2, 3, 4)}}
    if with_mlx_lm:
        settings["mlx-lm (plain)"] = mlx_lm_steps(default_model_path(), set(tokenizer.eos_token_ids))
    spent = {s: [0.0] * trials for s in settings}
    tokens, accepted, proposed = dict.fromkeys(settings, 0), dict.fromkeys(settings, 0), dict.fromkeys(settings, 0)
    for t in range(-1, trials):  # trial -1 warms up
        for p in ids:
            for s, run in settings.items():
                stats[:] = [0, 0]
                n = 0
                for _ in run(p):
                    n += 1
                    if n == 1:
                        t1 = time.perf_counter()
                if t >= 0:
                    spent[s][t] += time.perf_counter() - t1
                if t == 0:
                    tokens[s] += n - 1
                    accepted[s] += stats[0]
                    proposed[s] += stats[1]
    return {s: (statistics.median(v) / tokens[s] * 1e3, accepted[s], proposed[s]) for s, v in spent.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--no-mlx-lm", action="store_true", help="leave out mlx-lm's plain decoding")
    args = ap.parse_args()
    model, tokenizer = mlxmodels.load(default_model_path())
    costs = step_costs(model, args.calls)
    print("| step | eager | compiled | eager / compiled |\n|---|---|---|---|")
    for name in ("forward 1", "forward 2", "forward 4", "MTP step"):
        e, c = costs[(name, False)], costs[(name, True)]
        print(f"| {name} | {e:.2f} ms | {c:.2f} ms | {e / c:.2f}x |")
    dec = decode_ms_per_token(model, tokenizer, args.trials, not args.no_mlx_lm)
    print("\n| decoding | drafts accepted | ms / token | speed-up |\n|---|---|---|---|")
    for s, (v, a, p) in dec.items():
        print(f"| {s} | {f'{a}/{p}' if p else '-'} | {v:.2f} | {dec['plain'][0] / v:.2f}x |")


if __name__ == "__main__":
    main()
