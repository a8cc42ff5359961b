"""Fixtures for the app tests: tiny models built once per session, a private data folder per test."""

from __future__ import annotations

import pytest

from tests.app.tiny import NO_SYSTEM_TEMPLATE, build_tiny


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny(tiny_folder):
    import mlxmodels

    return mlxmodels.load(tiny_folder)


@pytest.fixture(scope="session")
def strict_folder(tmp_path_factory):
    """A model whose chat template rejects system prompts (as Gemma's and Mistral's do)."""
    return build_tiny(tmp_path_factory.mktemp("strict"), chat_template=NO_SYSTEM_TEMPLATE)


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    """Chats go to a fresh folder, never the user's."""
    folder = tmp_path / "data"
    monkeypatch.setenv("MLXM_DATA_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def thinker(tiny, tmp_path_factory):
    """The tiny model with a Qwen3-style thinking template (THINK_TEMPLATE): (model, tokenizer)."""
    from mlxmodels.tokenizer import load_tokenizer
    from tests.app.tiny import THINK_TEMPLATE, save_ascii_tokenizer

    folder = tmp_path_factory.mktemp("thinker")
    save_ascii_tokenizer(folder, THINK_TEMPLATE)
    return tiny[0], load_tokenizer(folder)
