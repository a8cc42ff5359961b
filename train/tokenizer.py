"""A byte-level BPE tokenizer trained on the training dialogues, with chat special tokens and a chat template.

Digits are split one per token (arithmetic stays learnable); chat roles are special tokens; `<|end|>` closes
every message and is the EOS. Saved with transformers (tokenizer.json, tokenizer_config.json,
chat_template.jinja), which mlxmodels.tokenizer reads without transformers.

    python -m train.tokenizer --data train/out/data/train.jsonl --out train/out/tokenizer --vocab 2048
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BOS, EOS, PAD = "<s>", "<|end|>", "<pad>"
ROLES = ("system", "user", "assistant")
SPECIALS = [PAD, BOS, EOS] + [f"<|{r}|>" for r in ROLES]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('roles are system, user and assistant, not ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build(texts, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def save(tok, folder: Path):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=SPECIALS[3:])
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("train/out/data/train.jsonl"))
    ap.add_argument("--out", type=Path, default=Path("train/out/tokenizer"))
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--dialogues", type=int, default=50_000, help="how many training dialogues to learn from")
    args = ap.parse_args()
    texts = []
    with open(args.data) as f:
        for n, line in enumerate(f):
            if n == args.dialogues:
                break
            texts += [m["content"] for m in json.loads(line)]
    tok = build(texts, args.vocab)
    save(tok, args.out)
    print(f"vocab {tok.get_vocab_size()} -> {args.out}")


if __name__ == "__main__":
    main()
