"""Rewrite a transformers-5 config.json into the older dialect most Hub repos (and mlx-lm) use."""


def legacy(cfg: dict) -> dict:
    cfg = dict(cfg)
    rp = cfg.pop("rope_parameters", None)
    if rp:
        if "full_attention" in rp or "sliding_attention" in rp:  # one entry per layer type (Gemma 3)
            local = rp.get("sliding_attention", {})
            cfg["rope_local_base_freq"] = local.get("rope_theta", 10000.0)
            rp = dict(rp.get("full_attention", {}))
        rp = dict(rp)
        cfg["rope_theta"] = rp.pop("rope_theta", 10000.0)
        if rp.get("rope_type", "default") != "default":
            rp["type"] = rp.pop("rope_type")  # the oldest spelling; mlx-lm and transformers read both
            cfg["rope_scaling"] = rp
    types = cfg.pop("layer_types", None)
    if types and cfg.get("model_type") == "gemma3_text":
        every = types.index("full_attention") + 1 if "full_attention" in types else len(types) + 1
        cfg["sliding_window_pattern"] = every
    if cfg.get("model_type") == "qwen3_moe" and "num_local_experts" in cfg:
        cfg["num_experts"] = cfg.pop("num_local_experts")
    if cfg.get("model_type") == "gpt2":
        cfg["n_ctx"] = cfg["n_positions"]
    return cfg
