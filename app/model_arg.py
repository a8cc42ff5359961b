"""The `-m/--model` argument shared by chat, generate, bench and info: a local folder, a Hub id, or nothing (the
default model shipped in the package)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from mlxmodels.config import ModelError

NO_DEFAULT = "no model given and no default model installed; pass -m"


def model_source(arg: Optional[str]) -> str:
    """What to load: `arg` as given, or the embedded default model's folder when `arg` is empty."""
    if arg == "":  # `-m "$UNSET"`: quietly running the built-in model would hide the mistake
        raise ModelError("-m is empty; give a model folder or Hub id, or leave -m out for the built-in model")
    if arg:
        return arg
    try:
        from mlxmodels.assets import default_model_path
    except ImportError:
        raise ModelError(NO_DEFAULT) from None
    path = Path(default_model_path())
    if not (path / "config.json").is_file():
        raise ModelError(NO_DEFAULT)
    return str(path)


def resolve_folder(arg: Optional[str], weights: bool = True) -> Path:
    """The local folder for `arg` (a Hub id is downloaded once into the Hugging Face cache; without `weights`, only
    its metadata)."""
    from mlxmodels.load import resolve

    return resolve(model_source(arg), weights=weights)


def display_name(arg: Optional[str]) -> str:
    return arg if arg else "default model"


def load(arg: Optional[str], dtype: Optional[str] = None, adapter_path: Optional[str] = None,
         parallel: Optional[str] = None):
    """-> (model, tokenizer, folder). A folder without tokenizer files is a user error here: every command that
    loads a model this way turns text into tokens. `adapter_path`: --adapter-path, a LoRA/DoRA folder from
    mlx_lm.lora applied on the fly. `parallel`: --parallel, this rank's share under mlx.launch."""
    import mlxmodels

    folder = resolve_folder(arg)
    model, tokenizer = mlxmodels.load(folder, dtype=dtype, adapter_path=adapter_path, parallel=parallel)
    if tokenizer is None:
        raise ModelError(f"{folder} has no tokenizer files; add the model's tokenizer.json to the folder")
    return model, tokenizer, folder


def read_json(path: Path) -> dict:
    """A model folder's JSON file, checked as the loader checks it ({} when absent)."""
    from mlxmodels.config import read_side_config

    return read_side_config(Path(path).parent, Path(path).name)


def is_gguf(folder: Path) -> bool:
    """`resolve` passes a file through only as a GGUF model (a folder is a folder)."""
    return Path(folder).is_file()


def model_config(folder: Path) -> dict:
    """config.json of a folder, or for a GGUF file the config its metadata gives (the header only is read)."""
    if not is_gguf(folder):
        return read_json(Path(folder) / "config.json")
    from mlxmodels.formats.gguf_model import GGUFCheckpoint

    ckpt = GGUFCheckpoint(folder)
    ckpt.close()
    return dict(ckpt.config)


def context_length(folder: Path) -> int:
    """The longest context the model was built for (config.json, a GGUF's <arch>.context_length), 4096 when the
    config does not say."""
    cfg = model_config(folder)
    cfg = {**cfg, **(cfg.get("text_config") or {})}
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(cfg.get(key), int) and cfg[key] > 0:
            return cfg[key]
    return 4096


def context_limit(folder: Path, requested: Optional[int]) -> int:
    """--context: at most the model's maximum (positions past what it was built for give garbage, or read past
    a learned position table); the maximum when not given."""
    limit = context_length(folder)
    if requested and requested > limit:
        raise ValueError(f"--context {requested} is above the model's maximum of {limit} tokens")
    return requested or limit


def sampling_defaults(folder: Path) -> dict:
    """Sampling settings from generation_config.json (as transformers reads them) or a GGUF's general.sampling.*
    keys, greedy when there are none."""
    if is_gguf(folder):
        from mlxmodels.formats.gguf import GGUFFile
        from mlxmodels.formats.gguf_generation import sampling

        g = GGUFFile(folder)
        try:
            return sampling(g)
        finally:
            g.close()
    gen = read_json(Path(folder) / "generation_config.json")
    out = {}
    if gen.get("do_sample") is False:
        return out
    for key, name in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"), ("min_p", "min_p"),
                      ("repetition_penalty", "repetition_penalty")):
        value = gen.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out
