"""Every test writes the user's data (saved chats, the list of models `mlxm ls` shows) into a folder of its own,
never the real one: commands record what they made after they succeed (app/models_cmd.remember_run)."""

import pytest


@pytest.fixture(autouse=True)
def private_user_data(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MLXM_DATA_DIR", str(tmp_path_factory.mktemp("user-data")))
