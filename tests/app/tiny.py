"""Tiny chat models for the app tests: a random Llama with a printable-ASCII tokenizer, so every generated
token is a whole character and re-encoding a reply gives back exactly the generated tokens."""

from __future__ import annotations

import json
from pathlib import Path

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
NO_SYSTEM_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                      "{{ raise_exception('System role not supported') }}{% endif %}"
                      "<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                      "{% if add_generation_prompt %}<|assistant|>{% endif %}")
# Qwen3's way of thinking, shortened: an earlier reply's reasoning is rendered back between <think> markers, and
# enable_thinking=False closes an empty reasoning block in the generation prompt so the reply is the answer
THINK_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>"
                  "{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}"
                  "{{ m['content'] }}</s>{% endfor %}"
                  "{% if add_generation_prompt %}<|assistant|>"
                  "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
                  "{% endif %}")
# DeepSeek-R1-0528's way: the generation prompt opens the reasoning, so the reply starts inside it
INSIDE_TEMPLATE = TEMPLATE.replace("<|assistant|>{% endif %}", "<|assistant|><think>\n{% endif %}")
SPECIALS = ["<pad>", "<s>", "</s>"]


def _byte_chars() -> dict:
    """GPT-2's byte -> printable character table (what the ByteLevel pre-tokenizer produces)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def save_ascii_tokenizer(folder: Path, chat_template: str = TEMPLATE) -> int:
    """tokenizer.json with one token per printable ASCII character, newline and tab, then <pad> <s> </s>.
    Returns the vocabulary size."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    chars = _byte_chars()
    alphabet = [chars[b] for b in [9, 10] + list(range(32, 127))]
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    if chat_template:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return tok.get_vocab_size(with_added_tokens=True)


def build_tiny(folder: Path, chat_template: str = TEMPLATE, seed: int = 0, **config) -> Path:
    """A 2-layer random Llama (float32) with the ASCII tokenizer; `config` overrides config.json. The weights are
    made with our own Decoder (HF tensor names), which is much faster than importing torch and transformers."""
    from mlxmodels.config import HFConfig  # first: mlxmodels picks the BLAS before mlx.core loads

    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlxmodels.decoder import Decoder
    from mlxmodels.families import get_adapter

    folder = Path(folder)
    vocab = save_ascii_tokenizer(folder, chat_template)
    cfg = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=vocab, hidden_size=32,
               intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0, pad_token_id=vocab - 3,
               bos_token_id=vocab - 2, eos_token_id=vocab - 1, tie_word_embeddings=False, torch_dtype="float32")
    cfg.update(config)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    spec = get_adapter(cfg["model_type"]).spec(HFConfig(cfg))
    mx.random.seed(seed)
    model = Decoder(spec)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "pt"})
    return folder
