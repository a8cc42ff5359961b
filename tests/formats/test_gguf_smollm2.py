"""A real published model through the GGUF path: SmolLM2-135M-Instruct Q4_1 (Llama architecture, GQA 9/3, tied
8-bit embeddings, byte-level BPE, ChatML), loaded by `mlxmodels.load("x.gguf")` and compared with transformers'
own GGUF loader on the same file (it dequantizes to float32; we keep the 4/8-bit layers quantized, exactly)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlxmodels
from mlxmodels.generate import stream_generate
from tests.gguf_fixture import smollm2  # noqa: F401  (the session fixture)

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "Explain recursion in one sentence."]
TEXTS = [
    "Hello, world! How are you today?",
    "Größe, ça va? Ünïcödé naïve café, Ελληνικά, Привет, как дела?",
    "日本語のテキストと中文字符, 한국어, مرحبا بالعالم, हिन्दी",
    "def f(x):\n    return x ** 2  # square\n\n\tif x > 10:\n        print(f'{x:>8}')\r\n",
    "emoji 😀🎉👩‍👩‍👧‍👦 🇫🇷 and ✨ numbers 12345, 3.14159 and 2024",
    "<|im_start|>user\nhi<|im_end|><file_sep><reponame>abc",
    "  leading spaces and trailing   \n\n\n",
]


@pytest.fixture(scope="module")
def ours(smollm2):  # noqa: F811
    return mlxmodels.load(smollm2)


@pytest.fixture(scope="module")
def theirs(smollm2):  # noqa: F811
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(gguf_file=smollm2.name)
    model = AutoModelForCausalLM.from_pretrained(smollm2.parent, dtype=torch.float32, **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(smollm2.parent, **kwargs)


def chat(tokenizer, prompt: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True)


def test_layers_stay_quantized(ours):
    model, _ = ours
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.q_proj, nn.QuantizedLinear) and isinstance(layer.mlp.down_proj,
                                                                                  nn.QuantizedLinear)
    assert (layer.self_attn.q_proj.bits, layer.self_attn.q_proj.group_size) == (4, 32)
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)  # Q8_0 in the file, tied to the head
    assert (model.model.embed_tokens.bits, model.model.embed_tokens.group_size) == (8, 32)
    assert model.spec.tie_embeddings and len(model.model.layers) == 30


def test_weights_dequantize_exactly(ours, smollm2):  # noqa: F811
    """Our Q projection, permuted back as llama.cpp's converter permutes it, is the file's tensor as the `gguf`
    package dequantizes it, bit for bit; so is the Q8_0 embedding."""
    gguf = pytest.importorskip("gguf")
    model, _ = ours
    reader = gguf.GGUFReader(smollm2)
    tensors = {t.name: t for t in reader.tensors}

    def reference(name):
        t = tensors[name]
        return gguf.dequantize(t.data, t.tensor_type).astype(np.float32)

    def dequantized(module):
        return np.array(mx.dequantize(module.weight, module.scales.astype(mx.float32),
                                      module.biases.astype(mx.float32), group_size=32, bits=module.bits))

    q = dequantized(model.model.layers[0].self_attn.q_proj)  # (576, 576), Hugging Face row order
    heads = 9
    permuted = q.reshape(heads, 2, q.shape[0] // heads // 2, -1).swapaxes(1, 2).reshape(q.shape)  # llama.cpp's
    assert np.array_equal(permuted.view(np.uint32), reference("blk.0.attn_q.weight").view(np.uint32))
    embed = dequantized(model.model.embed_tokens)
    assert np.array_equal(embed.view(np.uint32), reference("token_embd.weight").view(np.uint32))


def test_logits_match_transformers(ours, theirs):
    import torch

    model, tokenizer = ours
    hf, _ = theirs
    for prompt in PROMPTS:
        ids = chat(tokenizer, prompt)
        with torch.no_grad():
            want = hf(torch.tensor([ids])).logits[0].numpy()
        got = np.array(model(mx.array([ids])).astype(mx.float32))[0]
        assert got.shape == want.shape
        assert np.abs(got - want).max() < 5e-4, (prompt, np.abs(got - want).max())  # measured 1.4e-4; logits ~38


def test_greedy_replies_match_transformers(ours, theirs):
    import torch

    model, tokenizer = ours
    hf, _ = theirs
    for prompt in PROMPTS:
        ids = chat(tokenizer, prompt)
        want = hf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):].tolist()
        got = [r.token for r in stream_generate(model, tokenizer, ids, max_tokens=32)]
        assert got == want, (prompt, tokenizer.decode(got), tokenizer.decode(want))
        assert len(got) > 5


def test_tokenizer_matches_transformers(ours, theirs):
    _, tokenizer = ours
    _, hf = theirs
    for text in TEXTS:
        assert tokenizer.encode(text) == hf(text)["input_ids"], text
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == hf.decode(ids) == text
    assert tokenizer.vocab_size == len(hf) == 49152
    assert tokenizer.special_tokens_map == {k: v for k, v in hf.special_tokens_map.items() if isinstance(v, str)}
    assert tokenizer.eos_token_ids == {hf.eos_token_id}
    assert tokenizer.decode([0, 1, 2, 5, 28], skip_special_tokens=True) == hf.decode([0, 1, 2, 5, 28],
                                                                                     skip_special_tokens=True)


def test_digits_split_as_llama_cpp_does(ours):
    """tokenizer.ggml.pre "smollm": llama.cpp (and SmolLM2's own tokenizer.json) split every digit off first, so two
    spaces before a number stay one "ĠĠ" token; transformers' GGUF tokenizer splits with GPT-2's regex alone and
    gives "Ġ", "Ġ" there. We follow llama.cpp, the tokenizer the model was trained with."""
    _, tokenizer = ours
    ids = tokenizer.encode("x =  12")
    assert ids == [tokenizer.token_to_id(t) for t in ("x", "Ġ=", "ĠĠ", "1", "2")]


def test_chat_template_matches_transformers(ours, theirs):
    _, tokenizer = ours
    _, hf = theirs
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 👋"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]
    for add in (True, False):
        for msgs in (messages, messages[1:]):  # without a system message the template writes its own
            want = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add)
            assert tokenizer.apply_chat_template(msgs, add_generation_prompt=add) == want
