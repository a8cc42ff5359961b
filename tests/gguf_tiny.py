"""A tiny GGUF model with everything a real one carries, written with the `gguf` package's writer: a 2-layer Llama
with random weights in mixed types (Q8_0 and Q4_1 layers, a Q4_0 head, an F16 embedding, F32 norms), a byte-level
BPE tokenizer (256 byte tokens, a few merges, ChatML control tokens), BOS/EOS ids, a ChatML template and, when
asked, sampling defaults. For the app, convert and Ollama tests, which need a whole model in a few hundred KB."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlxmodels.formats.gguf_tokenizer import bytes_to_unicode

HIDDEN, FFN, HEADS, KV_HEADS, HEAD_DIM, LAYERS, CONTEXT = 64, 128, 4, 2, 16, 2, 256
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "l l", "Ġ w"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
          " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def vocabulary() -> list:
    spelling = bytes_to_unicode()
    return SPECIAL + [spelling[b] for b in range(256)] + ["".join(m.split(" ")) for m in MERGES]


def write_tiny_gguf(path: Path, sampling: dict = None, seed: int = 0) -> Path:
    """The tiny model at `path`; `sampling`: general.sampling.* values (temp, top_k, top_p, ...)."""
    import gguf

    q = gguf.GGMLQuantizationType
    tokens = vocabulary()
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in {"block_count": LAYERS, "context_length": CONTEXT, "embedding_length": HIDDEN,
                       "feed_forward_length": FFN, "attention.head_count": HEADS,
                       "attention.head_count_kv": KV_HEADS, "rope.dimension_count": HEAD_DIM,
                       "vocab_size": len(tokens)}.items():
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIAL) + [1] * (len(tokens) - len(SPECIAL)))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    for key, value in (sampling or {}).items():
        (w.add_uint32 if isinstance(value, int) else w.add_float32)(f"general.sampling.{key}", value)

    def add(name, shape, qtype, scale=0.1):
        data = (rng.standard_normal(shape) * scale).astype(np.float32)
        w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    add("token_embd.weight", (len(tokens), HIDDEN), q.F16, 1.0)
    add("output_norm.weight", (HIDDEN,), q.F32, 1.0)
    add("output.weight", (len(tokens), HIDDEN), q.Q4_0)
    for i, qtype in enumerate((q.Q8_0, q.Q4_1)):
        add(f"blk.{i}.attn_norm.weight", (HIDDEN,), q.F32, 1.0)
        add(f"blk.{i}.ffn_norm.weight", (HIDDEN,), q.F32, 1.0)
        add(f"blk.{i}.attn_q.weight", (HEADS * HEAD_DIM, HIDDEN), qtype)
        add(f"blk.{i}.attn_k.weight", (KV_HEADS * HEAD_DIM, HIDDEN), qtype)
        add(f"blk.{i}.attn_v.weight", (KV_HEADS * HEAD_DIM, HIDDEN), qtype)
        add(f"blk.{i}.attn_output.weight", (HIDDEN, HEADS * HEAD_DIM), qtype)
        add(f"blk.{i}.ffn_gate.weight", (FFN, HIDDEN), qtype)
        add(f"blk.{i}.ffn_up.weight", (FFN, HIDDEN), qtype)
        add(f"blk.{i}.ffn_down.weight", (HIDDEN, FFN), qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
