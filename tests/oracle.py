"""Hugging Face transformers as the oracle: tiny random models built in the test, saved as float32 safetensors."""

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM


def randomize(model: torch.nn.Module, seed: int):
    """Weights far from their init (norm weights not 1, biases not 0) so that every tensor matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # steers routing: make it matter
                b.copy_(torch.randn(b.shape, generator=g) * 0.5)


def build_hf(model_type: str, folder: Path, seed: int = 0, **config):
    """-> (transformers model in float32, eval mode), saved to folder."""
    cfg = AutoConfig.for_model(model_type, **config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    randomize(model, seed)
    model.save_pretrained(folder, safe_serialization=True)
    return model


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()


def hf_greedy(model, ids: np.ndarray, n: int) -> list:
    ids = torch.tensor(ids, dtype=torch.long)
    with torch.no_grad():  # an explicit attention mask: no prompt token is taken for padding
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             min_new_tokens=n, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def save_byte_tokenizer(folder: Path, chat_template: str = None):
    """A byte-level BPE tokenizer with no merges: ids 0-255 are bytes, then <pad>, <s>, </s> (vocab 259)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, key=lambda c: ord(c)))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(folder)
    return fast



TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=259, max_position_embeddings=128)


def build_tiny_llama(folder: Path) -> Path:
    """A 2-layer random Llama with the byte tokenizer: the folder loader, CLI and convert tests start from."""
    build_hf("llama", folder, **TINY_LLAMA)
    save_byte_tokenizer(folder)
    return folder

def edit_config(folder: Path, fn):
    path = Path(folder) / "config.json"
    cfg = json.loads(path.read_text())
    new = fn(cfg)
    cfg = new if isinstance(new, dict) else cfg
    path.write_text(json.dumps(cfg, indent=2))
    return cfg
