"""Train the default model: transformers' DeepSeek-V3 on CPU torch plus one MTP module, then export the folder.

The MTP module follows the convention mlxmodels runs (mlxmodels/parts/mtp.py, tests/mtp_fixture.py): at position
i, with h_i the main model's final normed hidden state and e = embed(t_{i+1}),
x = eh_proj([enorm(e); hnorm(h_i)]), h'_i = Block(x) (a full DeepSeek-V3 layer, index num_hidden_layers, causal
over MTP positions, RoPE position i), logits = lm_head(shared_head.norm(h'_i)) predict t_{i+2}. Because the
speculative drafter reuses the module recursively (draft k >= 2 is fed the module's own h' and the previous
draft, attending to the depth-1 entries of the committed tokens), a second, recursive pass is trained too:
its entry j sits at position j + 1, is fed (h'_j, t_{j+2}), sees depth-1 entries 0..j and itself, and predicts
t_{j+3}. Routing is noaux_tc: the correction bias is not learned but nudged after every step towards equal
expert loads (DeepSeek-V3's auxiliary-loss-free balancing).

Loss: main next-token loss + mtp_weight * (depth-1 loss + 0.5 * recursive loss), on assistant tokens only.

    python -m train.train --data train/out/data/train.jsonl --tokenizer train/out/tokenizer --out train/out/model
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SIZES = {
    # hidden, layers (first dense), heads, q_lora, kv_lora, nope, rope, v, dense ffn, experts, top-k, expert ffn
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, q_lora_rank=32, kv_lora_rank=32,
                 qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16, intermediate_size=128,
                 n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_group=2, topk_group=2),
    "s128": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, q_lora_rank=64, kv_lora_rank=48,
                 qk_nope_head_dim=24, qk_rope_head_dim=16, v_head_dim=24, intermediate_size=384,
                 n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=96, n_group=4, topk_group=2),
    "small": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=4, q_lora_rank=96, kv_lora_rank=64,
                  qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, intermediate_size=512,
                  n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=128, n_group=4, topk_group=2),
    "base": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, q_lora_rank=128, kv_lora_rank=64,
                 qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, intermediate_size=640,
                 n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=160, n_group=4, topk_group=2),
}


def make_config(size: str, tokenizer_folder: Path):
    from transformers import DeepseekV3Config

    tok = json.loads((tokenizer_folder / "tokenizer.json").read_text())
    vocab = len(tok["model"]["vocab"]) + sum(1 for t in tok["added_tokens"] if t["content"] not in tok["model"]["vocab"])
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    return DeepseekV3Config(
        vocab_size=vocab, n_shared_experts=1, first_k_dense_replace=1, routed_scaling_factor=2.5,
        norm_topk_prob=True, hidden_act="silu", max_position_embeddings=1024, rope_interleave=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
        bos_token_id=ids["<s>"], eos_token_id=ids["<|end|>"], pad_token_id=ids["<pad>"],
        num_nextn_predict_layers=1, num_key_value_heads=SIZES[size]["num_attention_heads"], **SIZES[size])


class MTP(nn.Module):
    """One DeepSeek-V3 MTP module; parameter names are those of `model.layers.{N}.` in the checkpoint."""

    def __init__(self, config, init_from):
        super().__init__()
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3DecoderLayer, DeepseekV3RMSNorm

        D, eps = config.hidden_size, config.rms_norm_eps
        self.block = DeepseekV3DecoderLayer(config, layer_idx=config.num_hidden_layers)
        self.enorm, self.hnorm = DeepseekV3RMSNorm(D, eps), DeepseekV3RMSNorm(D, eps)
        self.eh_proj = nn.Linear(2 * D, D, bias=False)
        self.shared_head_norm = DeepseekV3RMSNorm(D, eps)
        for m in self.modules():
            init_from._init_weights(m)

    def forward(self, e, h, position_ids, rotary, mask=None, cache=None):
        """e (B, T, D) embeddings of the next tokens, h (B, T, D) -> h' (B, T, D) (before shared_head.norm)."""
        x = self.eh_proj(torch.cat([self.enorm(e), self.hnorm(h)], dim=-1))
        return self.block(x, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                          position_embeddings=rotary(x, position_ids))


# ---------------------------------------------------------------- data


def encode_dialogues(path: Path, tokenizer_folder: Path, limit: int):
    """-> (ids, loss mask) of all dialogues concatenated; the mask marks assistant tokens and their <|end|>.

    Built message by message, which equals tokenizing the chat template's text (special tokens split it)."""
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(tokenizer_folder / "tokenizer.json"))
    sid = {t: tk.token_to_id(t) for t in ("<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>")}
    dialogues = []
    with open(path) as f:
        for n, line in enumerate(f):
            if n == limit:
                break
            dialogues.append(json.loads(line))
    contents = tk.encode_batch([m["content"] for d in dialogues for m in d], add_special_tokens=False)
    ids, mask, k = [], [], 0
    for d in dialogues:
        ids.append(sid["<s>"])
        mask.append(0)
        for m in d:
            body = contents[k].ids
            k += 1
            learn = int(m["role"] == "assistant")
            ids += [sid[f"<|{m['role']}|>"], *body, sid["<|end|>"]]
            mask += [0] + [learn] * (len(body) + 1)
    return np.array(ids, dtype=np.int64), np.array(mask, dtype=np.bool_), sid["<s>"]


def make_rows(ids, mask, bos: int, seq: int):
    """Cut the stream into rows of `seq` tokens; a row's tokens before its first <s> (a cut dialogue) get no loss."""
    n = len(ids) // seq
    ids, mask = ids[: n * seq].reshape(n, seq), mask[: n * seq].reshape(n, seq).copy()
    for r in range(n):
        first = np.argmax(ids[r] == bos) if (ids[r] == bos).any() else seq
        mask[r, :first] = False
    return torch.from_numpy(ids), torch.from_numpy(mask)


# ---------------------------------------------------------------- training


def masked_ce(head, h, targets, mask):
    """Cross-entropy of head(h) against targets where mask is set (the head only runs there)."""
    sel = h[mask]
    return F.cross_entropy(head(sel).float(), targets[mask]) if sel.shape[0] else h.sum() * 0


def losses(model, mtp, x, m, recursive: bool):
    B, T = x.shape
    body = model.model
    h = body(input_ids=x).last_hidden_state  # (B, T, D), after the final norm: what the head sees
    main = masked_ce(model.lm_head, h[:, :-1], x[:, 1:], m[:, 1:])

    from transformers import DynamicCache

    cache = DynamicCache() if recursive else None
    pos1 = torch.arange(T - 1)[None]
    e1 = body.embed_tokens(x[:, 1:])  # t_{i+1}
    h1 = mtp(e1, h[:, :-1], pos1, body.rotary_emb, cache=cache)  # (B, T-1, D): predicts t_{i+2}
    head = lambda z: model.lm_head(mtp.shared_head_norm(z))  # noqa: E731
    l1 = masked_ce(head, h1[:, :-1], x[:, 2:], m[:, 2:])
    if not recursive:
        return main, l1, torch.zeros(())
    # Recursive entry j: position j + 1, fed (h1_j, t_{j+2}); sees depth-1 entries 0..j and itself.
    n = T - 2
    keys = torch.zeros(n, (T - 1) + n, dtype=torch.bool)
    keys[:, : T - 1] = torch.tril(torch.ones(n, T - 1, dtype=torch.bool))
    keys[:, T - 1:] = torch.eye(n, dtype=torch.bool)
    h2 = mtp(body.embed_tokens(x[:, 2:]), h1[:, :-1], torch.arange(1, T - 1)[None], body.rotary_emb,
             mask=keys[None, None].expand(B, 1, n, -1), cache=cache)
    l2 = masked_ce(head, h2[:, :-1], x[:, 3:], m[:, 3:])
    return main, l1, l2


class Balancer:
    """noaux_tc load balancing: after each step, bias += rate * sign(mean load - load), per router."""

    def __init__(self, modules, rate: float):
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

        self.routers = [r for mod in modules for r in mod.modules() if isinstance(r, DeepseekV3TopkRouter)]
        self.rate, self.loads = rate, {}
        for r in self.routers:
            r.register_forward_hook(self._hook)

    def _hook(self, router, inputs, out):
        counts = torch.bincount(out[2].flatten(), minlength=router.num_experts).float()
        self.loads[router] = self.loads.get(router, 0) + counts

    @torch.no_grad()
    def step(self):
        imbalance = []
        for r, load in self.loads.items():
            r.e_score_correction_bias += self.rate * torch.sign(load.mean() - load)
            imbalance.append((load.max() / load.mean()).item())
        self.loads = {}
        return max(imbalance) if imbalance else 1.0


def train(args):
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    from transformers import DeepseekV3ForCausalLM

    config = make_config(args.size, args.tokenizer)
    model = DeepseekV3ForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    mtp = MTP(model.config, model)
    n_main = sum(p.numel() for p in model.parameters())
    n_mtp = sum(p.numel() for p in mtp.parameters())
    print(f"params: main {n_main / 1e6:.2f}M, mtp {n_mtp / 1e6:.2f}M", flush=True)

    ids, mask, bos = encode_dialogues(args.data, args.tokenizer, args.dialogues)
    rows, rmask = make_rows(ids, mask, bos, args.seq)
    print(f"data: {len(ids)} tokens ({mask.mean():.0%} learned) in {len(rows)} rows of {args.seq}", flush=True)

    params = list(model.parameters()) + list(mtp.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    balancer = Balancer([model, mtp], args.bias_rate)
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(rows), generator=g)
    model.train()
    mtp.train()
    t0, seen, log, done = time.time(), 0, [], 0
    for step in range(args.steps):
        # Warm-up, then cosine to 10%. Progress is the larger of the step and the time fraction: when the time
        # limit binds (a busy machine) the schedule still anneals; when the steps bind the run is reproducible.
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        if step >= args.warmup:
            progress = (step - args.warmup) / max(1, args.steps - args.warmup)
            if args.time_limit:
                progress = max(progress, (time.time() - t0) / args.time_limit)
            if progress >= 1:
                print(f"time limit reached at step {step}", flush=True)
                break
            lr = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
        for group in opt.param_groups:
            group["lr"] = lr
        start = (step * args.batch) % len(rows)
        idx = order[start: start + args.batch]
        if len(idx) < args.batch:  # next epoch: a new order
            order = torch.randperm(len(rows), generator=g)
            idx = order[: args.batch]
        x, m = rows[idx], rmask[idx]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(args.bf16)):
            main, l1, l2 = losses(model, mtp, x, m, args.recursive)
            loss = main + args.mtp_weight * (l1 + 0.5 * l2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        imb = balancer.step()
        seen, done = seen + x.numel(), done + 1
        if step % args.log_every == 0 or step == args.steps - 1:
            el = time.time() - t0
            row = dict(step=step, loss=round(main.item(), 4), mtp=round(l1.item(), 4), mtp2=round(l2.item(), 4),
                       lr=round(lr, 6), gnorm=round(gnorm.item(), 3), max_load=round(imb, 2),
                       tok_s=round(seen / el), elapsed_s=round(el))
            log.append(row)
            print(json.dumps(row), flush=True)
    return model, mtp, dict(steps=done, tokens=seen, seconds=round(time.time() - t0), log=log,
                            params_main=n_main, params_mtp=n_mtp)


# ---------------------------------------------------------------- export


def export(model, mtp, tokenizer_folder: Path, out: Path, dtype: str, copies: bool):
    """A Hugging Face folder: the main model via save_pretrained (per-expert tensors), the MTP module as layer N."""
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import DeepseekV3ForCausalLM

    torch_dtype = getattr(torch, dtype)
    cfg = model.config
    N = cfg.num_hidden_layers
    # A model with one layer more: its save_pretrained writes the MTP block's experts per expert, as DeepSeek does.
    full_cfg = type(cfg).from_dict({**cfg.to_dict(), "num_hidden_layers": N + 1})
    full = DeepseekV3ForCausalLM._from_config(full_cfg, dtype=torch.float32)
    state = dict(model.state_dict())
    state.update({f"model.layers.{N}.{k}": v for k, v in mtp.block.state_dict().items()})
    missing, unexpected = full.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    full.to(torch_dtype)
    out.mkdir(parents=True, exist_ok=True)
    full.save_pretrained(out, safe_serialization=True)
    weights = load_file(str(out / "model.safetensors"))
    p = f"model.layers.{N}."
    extra = {"enorm.weight": mtp.enorm.weight, "hnorm.weight": mtp.hnorm.weight,
             "eh_proj.weight": mtp.eh_proj.weight, "shared_head.norm.weight": mtp.shared_head_norm.weight}
    if copies:  # DeepSeek stores copies of the shared embedding and head with each MTP module
        extra.update({"embed_tokens.weight": model.model.embed_tokens.weight,
                      "shared_head.head.weight": model.lm_head.weight})
    weights.update({p + k: v.detach().to(torch_dtype).contiguous() for k, v in extra.items()})
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config.update(num_hidden_layers=N, num_nextn_predict_layers=1)
    config.pop("num_mtp_layers", None)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tokenizer_folder / f, out / f)
    gen = out / "generation_config.json"
    if gen.exists():
        g = json.loads(gen.read_text())
        g.update(eos_token_id=cfg.eos_token_id, bos_token_id=cfg.bos_token_id, pad_token_id=cfg.pad_token_id)
        gen.write_text(json.dumps(g, indent=2) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("train/out/data/train.jsonl"))
    ap.add_argument("--tokenizer", type=Path, default=Path("train/out/tokenizer"))
    ap.add_argument("--out", type=Path, default=Path("train/out/model"))
    ap.add_argument("--size", choices=SIZES, default="s128")
    ap.add_argument("--dialogues", type=int, default=200_000)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2200)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--mtp-weight", type=float, default=0.3)
    ap.add_argument("--recursive", type=int, default=1, help="train the recursive (second-draft) MTP pass too")
    ap.add_argument("--bias-rate", type=float, default=1e-3)
    ap.add_argument("--bf16", type=int, default=1, help="bfloat16 autocast")
    # One thread: on this shared 2-core machine, two OpenMP threads ran 7x slower than one (spinning on
    # barriers while other processes hold the cores).
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=3300, help="stop after this many seconds (0: none)")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--dtype", default="bfloat16", help="dtype of the saved weights")
    ap.add_argument("--copies", type=int, default=1, help="store the embedding/head copies in the MTP layer")
    args = ap.parse_args()
    model, mtp, info = train(args)
    model.eval()
    export(model, mtp, args.tokenizer, args.out, args.dtype, bool(args.copies))
    info["args"] = {k: str(v) for k, v in vars(args).items()}
    (args.out.parent / (args.out.name + "-train-log.json")).write_text(json.dumps(info, indent=1) + "\n")
    print(f"saved {args.out} after {info['steps']} steps, {info['tokens']} tokens, {info['seconds']} s")


if __name__ == "__main__":
    main()
