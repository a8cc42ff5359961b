"""Models shipped inside the package, so a fresh install can chat offline."""

from pathlib import Path


def default_model_path() -> Path:
    """The folder of the default model: a small DeepSeek-V3-shaped chat model (MLA, MoE, one MTP module)
    trained on synthetic arithmetic, letter, word, date and unit questions (see docs/DEFAULT_MODEL.md)."""
    return Path(__file__).resolve().parent / "default"
