"""A DeepSeek-V3 folder with a trained-shape MTP module, and an independent reference for its forward pass.

The MTP block is the last layer of a transformers model with one layer more (so the block itself is computed by
transformers' own DeepseekV3DecoderLayer); the MTP wrapper (norms, concatenation, projection, head) in NumPy.
"""

import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import torch

from tests.oracle import build_hf

CFG = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4, vocab_size=256,
           max_position_embeddings=256, pad_token_id=0, n_routed_experts=4, num_experts_per_tok=2,
           moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=16,
           qk_nope_head_dim=8, qk_rope_head_dim=8, head_dim=8, v_head_dim=8, n_group=2, topk_group=1)
N_LAYERS = 2


def rms(x, w, eps=1e-6):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def build(folder: Path, seed: int = 0):
    """-> (folder of an N-layer DeepSeek-V3 with one MTP module, transformers model with N + 1 layers)."""
    full = build_hf("deepseek_v3", folder.parent / (folder.name + "-full"), seed=seed,
                    num_hidden_layers=N_LAYERS + 1, **CFG)
    shutil.copytree(folder.parent / (folder.name + "-full"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(num_hidden_layers=N_LAYERS, num_nextn_predict_layers=1)
    (folder / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(seed + 1)
    weights = dict(mx.load(str(folder / "model.safetensors")))
    D, p = CFG["hidden_size"], f"model.layers.{N_LAYERS}."
    extra = {
        "enorm.weight": 1 + 0.2 * rng.normal(size=D), "hnorm.weight": 1 + 0.2 * rng.normal(size=D),
        "eh_proj.weight": rng.normal(size=(D, 2 * D)) / np.sqrt(2 * D),
        "shared_head.norm.weight": 1 + 0.2 * rng.normal(size=D),
    }
    weights.update({p + k: mx.array(v.astype(np.float32)) for k, v in extra.items()})
    weights[p + "shared_head.head.weight"] = weights["lm_head.weight"]  # DeepSeek stores copies
    weights[p + "embed_tokens.weight"] = weights["model.embed_tokens.weight"]
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    return folder, full


def reference(full, folder: Path, ids: np.ndarray):
    """MTP logits for positions 0..T-2: module 0 fed main hidden h_i and token t_{i+1}."""
    w = {k: np.array(v) for k, v in mx.load(str(folder / "model.safetensors")).items()
         if k.startswith(f"model.layers.{N_LAYERS}.") or k in ("model.embed_tokens.weight", "lm_head.weight")}
    p = f"model.layers.{N_LAYERS}."
    with torch.no_grad():
        out = full.model(torch.tensor(ids), output_hidden_states=True)
        h = full.model.norm(out.hidden_states[N_LAYERS]).numpy()[:, :-1]  # main model: first N layers, normed
        e = w["model.embed_tokens.weight"][ids[:, 1:]]
        x = np.concatenate([rms(e, w[p + "enorm.weight"]), rms(h, w[p + "hnorm.weight"])], -1) @ w[p + "eh_proj.weight"].T
        xt = torch.tensor(x, dtype=torch.float32)
        pos = torch.arange(xt.shape[1])[None]
        block = full.model.layers[N_LAYERS]
        h2 = block(xt, attention_mask=None, position_ids=pos,
                   position_embeddings=full.model.rotary_emb(xt, pos)).numpy()
    return rms(h2, w[p + "shared_head.norm.weight"]) @ w["lm_head.weight"].T
