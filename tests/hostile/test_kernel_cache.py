"""MLX's compiled-kernel cache (issue 11: no foreign code run): MLX loads any library it finds under
`<temp dir>/mlx/<version>/cpu` by name, so a cache folder others can write is never used, a damaged library is one
line, and a temp dir that is not a folder is one line (mlxmodels/kernel_cache.py)."""

from __future__ import annotations

import os

from tests.hostile.cli import mlxm, assert_refused

GENERATE = ["generate", "-p", "hi", "--max-tokens", "2"]


def test_temp_dir_that_is_not_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    for tmpdir in (tmp_path / "missing", tmp_path / "file"):
        assert_refused(mlxm(GENERATE, env={"TMPDIR": str(tmpdir)}), f"TMPDIR={tmpdir} is not a folder")


def test_a_cache_others_can_write_is_never_loaded_and_damage_is_one_line(tmp_path):
    shared = tmp_path / "tmp"
    planted = shared / "mlx"
    planted.mkdir(parents=True)
    planted.chmod(0o777)  # as a /tmp/mlx made by someone else would be: anyone may plant a library there
    (planted / "sentinel").write_text("untouched")
    env = {"TMPDIR": str(shared), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    run = mlxm(GENERATE, env=env, timeout=300)
    assert run.rc == 0, run.stderr
    assert sorted(p.name for p in planted.rglob("*")) == ["sentinel"]  # MLX compiled nowhere near it
    own = tmp_path / "cache" / "mlxmodels" / "tmp" / "mlx"
    libraries = list(own.rglob("*.so"))
    assert libraries and oct(own.parent.stat().st_mode & 0o777) == "0o700"  # closed to others

    for lib in libraries:  # a cache damaged by a full disk or a killed compile
        lib.write_bytes(b"not a library")
    assert_refused(mlxm(GENERATE, env=env, timeout=300), "compiled-kernel cache holds a damaged library", str(own))
    os.chmod(planted, 0o700)
