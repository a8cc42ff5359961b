"""Fixtures shared by the hostile suites."""

from __future__ import annotations

import pytest


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A fresh user data folder ($MLXM_DATA_DIR) for this test, in-process and for the subprocesses it starts:
    chats and crash logs never touch the user's."""
    folder = tmp_path / "data"
    monkeypatch.setenv("MLXM_DATA_DIR", str(folder))
    return folder
