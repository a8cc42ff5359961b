"""MLX's cache of compiled CPU kernels, kept where no one else can write.

MLX's CPU backend compiles `mx.compile`d functions into shared libraries under `<temp dir>/mlx/<version>/cpu` and
loads whatever library it finds there by name. The temp dir is shared (`/tmp`): a library another user planted
there before our first run would be loaded into our process. So before `mlx.core` is imported, the cache folder
must be ours and closed to others (created 0700 when absent); if it is not (another owner, writable by others, a
symlink), MLX is pointed at a private temp folder in the user's cache instead (`TMPDIR`, for this process and its
children). A temp dir that is not a folder is reported (`PROBLEM`), since MLX would fail at its first compile.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Optional

ENV_ORDER = ("TMPDIR", "TMP", "TEMP", "TEMPDIR")  # what std::filesystem::temp_directory_path reads, in order


def mlx_temp_dir() -> tuple[Optional[str], str]:
    """(the variable that named it or None, the folder) as MLX will choose it."""
    for name in ENV_ORDER:
        if os.environ.get(name):
            return name, os.environ[name]
    return None, "/tmp"


def private(path: Path) -> bool:
    """A real folder (not a link) owned by us that nobody else may write to."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def claim(path: Path) -> bool:
    """Make `path` (mode 0700) if absent; -> whether it is then private."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError:
        return False
    return private(path)


def prepare() -> Optional[str]:
    """Run before `import mlx.core`; -> a problem to report, or None."""
    if os.name != "posix" or "mlx.core" in sys.modules:
        return None
    var, tmp = mlx_temp_dir()
    if not os.path.isdir(tmp):
        return (f"{var}={tmp} is not a folder; MLX compiles its CPU kernels in the temp folder: point {var} at a "
                "folder or unset it")
    if claim(Path(tmp) / "mlx"):
        return None
    try:
        own = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlxmodels" / "tmp"
    except RuntimeError:  # no home folder to be found
        return f"{Path(tmp) / 'mlx'} (MLX's compiled-kernel cache) is not private to you; set TMPDIR to a folder only you can write"
    if claim(own.parent) and claim(own):
        os.environ["TMPDIR"] = str(own)
        return None
    return (f"{Path(tmp) / 'mlx'} (MLX's compiled-kernel cache) is not private to you and {own} could not be "
            "made; set TMPDIR to a folder only you can write")


def cache_dir() -> Path:
    """Where MLX keeps compiled kernels in this process."""
    return Path(mlx_temp_dir()[1]) / "mlx"


PROBLEM = prepare()
