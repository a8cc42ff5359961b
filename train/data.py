"""Synthetic chat dialogues whose answers a program computes, with a held-out split never seen in training.

Every question has a key (the task and its inputs); a stable hash of the key puts it in the held-out split
(about 10%) or the training split. Words are split as a whole: a held-out word appears in no training
question of any task, so spelling, reversing and counting are measured on unseen words.

    python -m train.data --out train/out/data --train 200000 --heldout 100    # writes train.jsonl, heldout.jsonl

words.txt: the 2,009 words of 3-9 letters in Faker's en_US lorem word list (MIT licence), a list of common
English words.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import random
from pathlib import Path

WORDS = [w for w in (Path(__file__).parent / "words.txt").read_text().split() if w]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
UNITS = {"km": "kilometers", "m": "meters", "cm": "centimeters", "mm": "millimeters", "kg": "kilograms",
         "g": "grams", "L": "liters", "mL": "milliliters"}
CONVERSIONS = [("km", "m", 1000), ("m", "cm", 100), ("cm", "mm", 10), ("m", "mm", 1000), ("kg", "g", 1000),
               ("L", "mL", 1000)]
SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a small, precise assistant.",
                  "Answer briefly and exactly."]
ABOUT = ("I can add and subtract numbers, compare them, count letters, spell and reverse words, "
         "and answer questions about weekdays, dates and metric units.")


def heldout(key) -> bool:
    """The split of a question key: stable across runs and Python versions."""
    return int(hashlib.md5(repr(key).encode()).hexdigest(), 16) % 10 == 0


def word_heldout(word: str) -> bool:
    return heldout(("word", word))


def letters(word: str) -> str:
    return " ".join(word)


def number(rng: random.Random) -> int:
    """0..999: one digit 25%, two digits 50%, three digits 25%."""
    return rng.randrange(*[(0, 10), (10, 100), (10, 100), (100, 1000)][rng.randrange(4)])


def decimal(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".")


# ---------------------------------------------------------------- task families: rng -> (key, question, answer)


def t_add(rng):
    a, b = number(rng), number(rng)
    q = rng.choice(["What is {a} + {b}?", "Compute {a} + {b}.", "{a} + {b} = ?", "Add {a} and {b}.",
                    "What is the sum of {a} and {b}?"]).format(a=a, b=b)
    return ("add", a, b), q, f"{a} + {b} = {a + b}."


def t_sub(rng):
    a, b = sorted((number(rng), number(rng)), reverse=True)
    q = rng.choice(["What is {a} - {b}?", "Compute {a} - {b}.", "{a} - {b} = ?", "Subtract {b} from {a}.",
                    "What is {a} minus {b}?"]).format(a=a, b=b)
    return ("sub", a, b), q, f"{a} - {b} = {a - b}."


def t_compare(rng):
    a, b = number(rng), number(rng)
    if a == b:
        b = (b + 1 + rng.randrange(999)) % 1000
    larger = rng.random() < 0.6
    if larger:
        q = rng.choice(["Which is larger, {a} or {b}?", "Which number is bigger: {a} or {b}?"]).format(a=a, b=b)
        hi, lo = max(a, b), min(a, b)
        return ("compare", a, b, "larger"), q, f"{hi} is larger than {lo}."
    q = rng.choice(["Which is smaller, {a} or {b}?", "Which number is less: {a} or {b}?"]).format(a=a, b=b)
    return ("compare", a, b, "smaller"), q, f"{min(a, b)} is smaller than {max(a, b)}."


def pick_word(rng, held: bool):
    while True:
        w = rng.choice(WORDS)
        if word_heldout(w) == held:
            return w


def t_count(rng, held=False):
    w = pick_word(rng, held)
    absent = [c for c in "abcdefghijklmnopqrstuvwxyz" if c not in w]
    c = rng.choice(w) if rng.random() < 0.8 or not absent else rng.choice(absent)
    q = rng.choice(['How many times does the letter "{c}" appear in "{w}"?', 'How many "{c}"s are in "{w}"?',
                    'Count the letter "{c}" in the word "{w}".']).format(c=c, w=w)
    n = w.count(c)
    return ("count", w, c), q, f'{letters(w)}: the letter "{c}" appears {n} time{"" if n == 1 else "s"}.'


def t_spell(rng, held=False):
    w = pick_word(rng, held)
    q = rng.choice(['Spell the word "{w}".', 'How do you spell "{w}"?', 'Spell "{w}" letter by letter.']).format(w=w)
    return ("spell", w), q, f'"{w}" is spelled {letters(w)}.'


def t_reverse(rng, held=False):
    w = pick_word(rng, held)
    q = rng.choice(['Reverse the word "{w}".', 'What is "{w}" spelled backwards?',
                    'Write "{w}" backwards.']).format(w=w)
    return ("reverse", w), q, f"{letters(w)}, reversed: {letters(w[::-1])}."


def t_weekday(rng):
    d, n = rng.choice(DAYS), rng.randrange(1, 201)
    q = rng.choice(["If today is {d}, what day of the week will it be in {n} days?",
                    "What day comes {n} days after {d}?", "Which weekday is {n} days after {d}?"]).format(d=d, n=n)
    later = DAYS[(DAYS.index(d) + n) % 7]
    return ("weekday", d, n), q, f"{n} day{'' if n == 1 else 's'} after {d} is {later}."


def fmt_date(d: dt.date) -> str:
    return f"{MONTHS[d.month - 1]} {d.day}, {d.year}"


def t_date(rng):
    d = dt.date(2000, 1, 1) + dt.timedelta(days=rng.randrange(31 * 365))
    n = rng.randrange(1, 31)
    q = rng.choice(["What is the date {n} days after {d}?", "What date is {n} days after {d}?",
                    "Which date comes {n} days after {d}?"]).format(n=n, d=fmt_date(d))
    return ("date", d.isoformat(), n), q, f"{n} day{'' if n == 1 else 's'} after {fmt_date(d)} is {fmt_date(d + dt.timedelta(days=n))}."


def t_units(rng):
    big, small, f = rng.choice(CONVERSIONS)
    if rng.random() < 0.5:  # big -> small: multiply
        v = number(rng) or 1
        src, dst, r = big, small, str(v * f)
    else:  # small -> big: a decimal shift
        v = rng.randrange(1, 10 * f) if rng.random() < 0.5 else number(rng) or 1
        src, dst, r = small, big, decimal(v / f)
    q = rng.choice(["Convert {v} {s} to {d}.", "How many {D} are in {v} {S}?", "What is {v} {s} in {d}?"]).format(
        v=v, s=src, d=dst, S=UNITS[src], D=UNITS[dst])
    return ("units", v, src, dst), q, f"{v} {src} = {r} {dst}."


def t_chat(rng):
    """Small talk and out-of-domain requests: fixed, sensible replies (not part of the held-out evaluation)."""
    kind = rng.randrange(5)
    if kind == 0:
        q = rng.choice(["Hi", "Hello", "Hello!", "Hi there!", "Hey", "Good morning", "Good evening!"])
        a = "Hello! " + ABOUT + " What would you like to know?"
    elif kind == 1:
        q = rng.choice(["Who are you?", "What are you?", "Introduce yourself."])
        a = ("I am the small default model of mlxmodels, shaped like DeepSeek-V3 and trained on synthetic "
             "questions. " + ABOUT)
    elif kind == 2:
        q = rng.choice(["What can you do?", "Help", "How can you help me?", "What do you know?"])
        a = ABOUT + ' For example, ask "What is 12 + 30?" or "Spell the word house."'
    elif kind == 3:
        q = rng.choice(["Thanks", "Thank you!", "Thanks a lot.", "Great, thank you."])
        a = "You're welcome!"
    else:
        w = pick_word(rng, False)
        q = rng.choice(["What is a {w}?", "Tell me about {w}.", "Write a poem about {w}.",
                        "What does {w} mean?", "Why is {w} important?"]).format(w=w)
        a = "Sorry, I can't answer that. " + ABOUT
    return ("chat", q), q, a


FAMILIES = {"add": t_add, "sub": t_sub, "compare": t_compare, "count": t_count, "spell": t_spell,
            "reverse": t_reverse, "weekday": t_weekday, "date": t_date, "units": t_units}
WEIGHTS = {"add": 1.5, "sub": 1.5, "compare": 0.7, "count": 1.2, "spell": 1.0, "reverse": 1.2, "weekday": 0.8,
           "date": 1.3, "units": 1.0, "chat": 0.4}
WORD_TASKS = {"count", "spell", "reverse"}


def sample(rng: random.Random, family: str, held: bool):
    """One (key, question, answer) of `family` from the requested split."""
    if family == "chat":
        return t_chat(rng)
    fn = FAMILIES[family]
    while True:
        key, q, a = fn(rng, held) if family in WORD_TASKS else fn(rng)
        if family in WORD_TASKS or heldout(key) == held:
            return key, q, a


def dialogue(rng: random.Random) -> list[dict]:
    """A training conversation: an optional system prompt, then one to three question/answer turns."""
    msgs = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.15 else []
    names, weights = list(WEIGHTS), list(WEIGHTS.values())
    for _ in range(rng.choices([1, 2, 3], [0.7, 0.2, 0.1])[0]):
        _, q, a = sample(rng, rng.choices(names, weights)[0], held=False)
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return msgs


def heldout_set(n_per_family: int, seed: int = 1234) -> list[dict]:
    """n distinct held-out questions per family, in a fixed order."""
    rng, out = random.Random(seed), []
    for family in FAMILIES:
        seen = set()
        while len(seen) < n_per_family:
            key, q, a = sample(rng, family, held=True)
            if key not in seen:
                seen.add(key)
                out.append({"family": family, "question": q, "answer": a})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("train/out/data"))
    ap.add_argument("--train", type=int, default=200_000, help="training dialogues")
    ap.add_argument("--heldout", type=int, default=100, help="held-out questions per family")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    with open(args.out / "train.jsonl", "w") as f:
        for _ in range(args.train):
            f.write(json.dumps(dialogue(rng)) + "\n")
    with open(args.out / "heldout.jsonl", "w") as f:
        for row in heldout_set(args.heldout):
            f.write(json.dumps(row) + "\n")
    print(f"wrote {args.train} dialogues and {args.heldout} held-out questions per family to {args.out}")


if __name__ == "__main__":
    main()
