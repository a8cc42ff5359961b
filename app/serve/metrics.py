"""engine.stats() in Prometheus' text format (version 0.0.4), each series named mlxm_* with its help and type."""

from __future__ import annotations

from typing import Dict

# stats key -> (metric name, type, help)
SERIES = {
    "running": ("mlxm_running_sequences", "gauge", "Sequences in the running batch"),
    "waiting": ("mlxm_waiting_sequences", "gauge", "Sequences waiting to be admitted (or resumed after preemption)"),
    "kv_blocks_used": ("mlxm_kv_blocks_used", "gauge", "KV cache blocks held by sequences"),
    "kv_blocks_free": ("mlxm_kv_blocks_free", "gauge", "KV cache blocks free, cached prefix blocks included"),
    "kv_blocks_cached": ("mlxm_kv_blocks_cached", "gauge", "Free KV blocks kept for their cached prefix"),
    "prefix_hit_tokens": ("mlxm_prefix_cache_hit_tokens_total", "counter",
                          "Prompt tokens found in the prefix cache instead of prefilled"),
    "prompt_tokens_total": ("mlxm_prompt_tokens_total", "counter", "Prompt tokens of all requests submitted"),
    "prompt_tokens_prefilled_total": ("mlxm_prompt_tokens_prefilled_total", "counter",
                                      "Prompt tokens run through the model (recomputation after preemption "
                                      "included)"),
    "generation_tokens_total": ("mlxm_generation_tokens_total", "counter", "Tokens generated"),
    "generation_tokens_per_second": ("mlxm_generation_tokens_per_second", "gauge",
                                     "Tokens generated per second over the last seconds"),
    "requests_total": ("mlxm_requests_total", "counter", "Requests accepted by the engine"),
    "preemptions_total": ("mlxm_preemptions_total", "counter", "Sequences preempted for lack of KV blocks"),
}


def prometheus(stats: Dict[str, float]) -> str:
    lines = []
    for key, value in stats.items():
        name, kind, text = SERIES.get(key, (f"mlxm_{key}", "gauge", key.replace("_", " ")))
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {_number(value)}"]
    return "\n".join(lines) + "\n"


def _number(value) -> str:
    return repr(float(value)) if isinstance(value, float) and not float(value).is_integer() else str(int(value))
