"""Checkpoint helpers shared by the MoE adapters: stacking one-tensor-per-expert weights into (E, out, in)."""

import re

import mlx.core as mx

EXPERT = re.compile(r"^(?P<prefix>.*)\.experts\.(?P<e>\d+)\.(?P<proj>\w+)\.(?P<kind>weight|scales|biases)$")


def stack_experts(weights: dict, renames: dict = None, dst: str = "switch_mlp") -> dict:
    """`<prefix>.experts.<e>.<proj>.<kind>` (e = 0..E-1) -> `<prefix>.<dst>.<proj>.<kind>` stacked on axis 0.

    Works on any subset of a checkpoint (a shard, a layer); folders already stacked pass through unchanged.
    """
    renames = renames or {}
    groups, out = {}, {}
    for name, w in weights.items():
        m = EXPERT.match(name)
        if m is None:
            out[name] = w
            continue
        key = f"{m['prefix']}.{dst}.{renames.get(m['proj'], m['proj'])}.{m['kind']}"
        groups.setdefault(key, {})[int(m["e"])] = w
    for key, by_expert in groups.items():
        if sorted(by_expert) != list(range(len(by_expert))):
            missing = sorted(set(range(max(by_expert) + 1)) - set(by_expert))
            raise ValueError(f"expert tensor(s) missing for {key}: experts {missing}")
        out[key] = mx.stack([by_expert[e] for e in range(len(by_expert))])
    return out


def n_experts(cfg) -> int:
    """Configs name the routed expert count differently (n_routed_experts, num_experts, num_local_experts): the
    spelling config.json uses wins over the family's default under another name."""
    names = ("n_routed_experts", "num_experts", "num_local_experts")
    for k in names:
        if k in cfg and cfg[k]:
            return cfg[k]
    for k in names:
        if cfg.get(k):
            return cfg[k]
    return cfg.require("num_experts")
