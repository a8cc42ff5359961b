"""The shipped default model (mlxmodels/assets/default): loads, matches transformers, answers, drafts.

Thresholds are set from the measured values in docs/DEFAULT_MODEL.md, with margin.
"""

import json

import mlx.core as mx
import numpy as np
import pytest

import mlxmodels
from mlxmodels.assets import default_model_path
from mlxmodels.generate import stream_generate
from mlxmodels.parts.mla import MLA
from mlxmodels.parts.moe import MoE
from train.data import heldout_set

FOLDER = default_model_path()
GOLDEN = {  # greedy replies of the shipped model
    "What is 12 + 30?": "12 + 30 = 42.",
    'Spell the word "garden".': '"garden" is spelled g a r d e n.',
    "Hello": "Hello! I can add and subtract numbers, compare them, count letters, spell and reverse words, and answer "
             "questions about weekdays, dates and metric units. What would you like to know?",
}
MIN_ACCURACY = 0.55  # on the 27 held-out questions below (3 per family): measured 19/27 = 0.70 (CPU, float32)
MIN_ACCEPTANCE = 0.8  # share of MTP drafts accepted with num_draft=2, greedy: measured 80/84 = 0.95


@pytest.fixture(scope="module")
def loaded():
    return mlxmodels.load(FOLDER, dtype="float32")  # the dtype the thresholds and golden texts were measured in


def chat_ids(tokenizer, question):
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=True)


def reply(model, tokenizer, question, **kw):
    text, last = "", None
    for r in stream_generate(model, tokenizer, chat_ids(tokenizer, question), max_tokens=80, **kw):
        text, last = text + r.text, r
    return text, last


def test_folder_is_a_small_deepseek_v3_with_mtp(loaded):
    default, _ = mlxmodels.load(FOLDER)  # the backend's default dtype
    assert len(default.mtp_modules) == 1
    model, tokenizer = loaded
    cfg = json.loads((FOLDER / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v3" and cfg["num_nextn_predict_layers"] == 1
    assert sum(f.stat().st_size for f in FOLDER.iterdir()) <= 20e6
    layers = model.model.layers
    assert len(layers) == cfg["num_hidden_layers"] + 1 and len(model.mtp_modules) == 1
    assert all(isinstance(b.self_attn, MLA) for b in layers)
    assert not isinstance(layers[0].mlp, MoE) and all(isinstance(b.mlp, MoE) for b in layers[1:])
    assert tokenizer.has_chat_template and tokenizer.eos_token_ids == {tokenizer.token_to_id("<|end|>")}


def test_chat_template_matches_transformers(loaded):
    from transformers import AutoTokenizer

    _, tokenizer = loaded
    hf = AutoTokenizer.from_pretrained(FOLDER)
    msgs = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Spell the word \"tree\"."},
            {"role": "assistant", "content": "\"tree\" is spelled t r e e."}, {"role": "user", "content": "7 + 8 = ?"}]
    ours = tokenizer.apply_chat_template(msgs, tokenize=True)
    theirs = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert ours == list(theirs)


def test_logits_match_transformers(loaded):
    import torch
    from transformers import DeepseekV3ForCausalLM

    model, tokenizer = loaded
    ids = chat_ids(tokenizer, "What date is 12 days after March 25, 2021?")
    hf = DeepseekV3ForCausalLM.from_pretrained(FOLDER, dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits.numpy()
    got = np.array(model(mx.array([ids])))
    assert np.abs(got - want).max() <= 1e-4


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def test_mtp_module_matches_transformers_block(loaded):
    """The MTP module as trained: transformers' own decoder layer (index N) around the wrapper in NumPy."""
    import torch
    from transformers import AutoConfig, DeepseekV3ForCausalLM

    model, tokenizer = loaded
    ids = np.array([chat_ids(tokenizer, "Reverse the word \"garden\".") + tokenizer.encode("g a r d e n")])
    cfg = AutoConfig.from_pretrained(FOLDER)
    N, eps = cfg.num_hidden_layers, cfg.rms_norm_eps
    cfg.num_hidden_layers = N + 1  # loads the MTP block as an ordinary last layer
    full = DeepseekV3ForCausalLM.from_pretrained(FOLDER, config=cfg, dtype=torch.float32).eval()
    w = {k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(FOLDER / "model.safetensors")).items()
         if k.startswith(f"model.layers.{N}.") or k in ("model.embed_tokens.weight", "lm_head.weight")}
    p = f"model.layers.{N}."
    with torch.no_grad():
        out = full.model(torch.tensor(ids), output_hidden_states=True)
        h = full.model.norm(out.hidden_states[N]).numpy()[:, :-1]  # main model: N layers, normed
        e = w["model.embed_tokens.weight"][ids[:, 1:]]
        x = np.concatenate([rms(e, w[p + "enorm.weight"], eps), rms(h, w[p + "hnorm.weight"], eps)], -1)
        xt = torch.tensor(x @ w[p + "eh_proj.weight"].T, dtype=torch.float32)
        pos = torch.arange(xt.shape[1])[None]
        h2 = full.model.layers[N](xt, attention_mask=None, position_ids=pos,
                                  position_embeddings=full.model.rotary_emb(xt, pos)).numpy()
    want = rms(h2, w[p + "shared_head.norm.weight"], eps) @ w["lm_head.weight"].T

    hidden = model.model(mx.array(ids), model.make_cache())
    _, got = model.mtp_step(0, mx.array(ids[:, 1:]), hidden[:, :-1], model.make_mtp_cache()[0])
    assert np.abs(np.array(got) - want).max() <= 1e-4


@pytest.mark.parametrize("question", sorted(GOLDEN))
def test_golden_reply(loaded, question):
    model, tokenizer = loaded
    assert reply(model, tokenizer, question)[0] == GOLDEN[question]


def test_heldout_accuracy(loaded):
    model, tokenizer = loaded
    rows = heldout_set(3)
    correct = [reply(model, tokenizer, r["question"])[0].strip() == r["answer"] for r in rows]
    assert len(rows) == 27 and np.mean(correct) >= MIN_ACCURACY, np.mean(correct)


def test_mtp_speculative_decoding_accepts_drafts_with_identical_output(loaded):
    model, tokenizer = loaded
    proposed = accepted = 0
    for row in heldout_set(1, seed=7):
        plain, _ = reply(model, tokenizer, row["question"])
        fast, last = reply(model, tokenizer, row["question"], draft="mtp", num_draft=2)
        assert fast == plain
        proposed, accepted = proposed + last.draft_proposed, accepted + last.draft_accepted
    assert proposed > 0 and accepted / proposed >= MIN_ACCEPTANCE, accepted / proposed
