"""The dispatch's verdicts, kept in the user cache so a later process skips self-tests and timings already done.

One JSON file per (MLX version, device name) under `$XDG_CACHE_HOME/mlxmodels/kernels/` (or ~/.cache/...):

    {"format": 1, "selftests": [{"source", "entry", "variant", "pass", "reason"}, ...],
     "timings": [{"source", "variant", "shape_class", "kernel_us", "builtin_us", "pick"}, ...]}

`source` is a digest of the kernel sources and launch code: a verdict holds only for the code it was made with,
so an upgrade tests again. The file is untrusted (anything may have written it): it is read only when it is a
regular file under MAX_BYTES, every record is checked, a record or file that does not fit is ignored (and
replaced at the next write), and no error from the file system reaches the caller. Writes merge with what is on
disk then, and land whole (a temporary file renamed over the old one).
"""

import hashlib
import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HERE = Path(__file__).parent
FORMAT = 1
MAX_BYTES = 1 << 20
MAX_RECORDS = 2000  # per list; the oldest go first
LIMITS = {"source": 64, "entry": 64, "variant": 512, "shape_class": 256, "reason": 300}


def default_folder() -> Optional[Path]:
    """The user cache's kernels folder; None where there is no home to put it in (verdicts then last a process)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    try:
        root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    except RuntimeError:  # no home directory
        return None
    return root / "mlxmodels" / "kernels"


def source_digest() -> str:
    """What the verdicts vouch for: the kernel bodies and the Python that launches them."""
    h = hashlib.sha256()
    for path in sorted(HERE.glob("*.metal")) + [HERE / "launch.py", HERE / "quantized.py", HERE / "paged.py"]:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def file_name(mlx_version: str, device: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"mlx-{mlx_version}_{device}")[:120] + ".json"


def _text(record: dict, key: str, optional: bool = False) -> bool:
    value = record.get(key)
    return (optional and value is None) or (isinstance(value, str) and len(value) <= LIMITS[key])


def _time(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def valid_selftest(r) -> bool:
    return (isinstance(r, dict) and _text(r, "source") and _text(r, "entry") and _text(r, "variant")
            and isinstance(r.get("pass"), bool) and _text(r, "reason", optional=True))


def valid_timing(r) -> bool:
    return (isinstance(r, dict) and _text(r, "source") and _text(r, "variant") and _text(r, "shape_class")
            and _time(r.get("kernel_us")) and _time(r.get("builtin_us")) and r.get("pick") in ("kernel", "builtin"))


def _selftest_key(r: dict) -> Tuple[str, ...]:
    return r["source"], r["variant"]


def _timing_key(r: dict) -> Tuple[str, ...]:
    return r["source"], r["variant"], r["shape_class"]


def read(path: Path) -> Tuple[List[dict], List[dict]]:
    """-> (selftests, timings) in the file, the records that pass the checks; ([], []) for a missing or bad file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO planted there must not block the reader
    except OSError:
        return [], []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return [], []
        with os.fdopen(fd, "rb") as f:
            fd = -1
            data = f.read(MAX_BYTES + 1)
    except OSError:
        return [], []
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > MAX_BYTES:
        return [], []
    try:
        doc = json.loads(data)
    except ValueError:  # also UnicodeDecodeError
        return [], []
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return [], []
    tests, times = doc.get("selftests"), doc.get("timings")
    if not isinstance(tests, list) or not isinstance(times, list):
        return [], []
    return [r for r in tests if valid_selftest(r)], [r for r in times if valid_timing(r)]


def _merged(old: List[dict], new: List[dict], key) -> List[dict]:
    by_key = {key(r): r for r in old}
    for r in new:
        by_key.pop(key(r), None)  # re-inserted last: the newest verdicts survive the trim
        by_key[key(r)] = r
    return list(by_key.values())[-MAX_RECORDS:]


class Verdicts:
    """Self-test and timing verdicts for one MLX version and device: read from `folder` on first use, written
    back (merged) at every new verdict. `folder=None` keeps them for the process only."""

    def __init__(self, folder: Optional[Path], mlx_version: str, device: str, source: Optional[str] = None):
        self.path = folder / file_name(mlx_version, device) if folder is not None else None
        self.source = source or source_digest()
        self._tests: Optional[Dict[str, dict]] = None  # variant -> record, for this source
        self._times: Dict[Tuple[str, str], dict] = {}  # (variant, shape_class) -> record, for this source
        self._mine: Tuple[List[dict], List[dict]] = ([], [])  # made in this process: written over the disk's

    def _load(self) -> Dict[str, dict]:
        if self._tests is None:
            tests, times = read(self.path) if self.path is not None else ([], [])
            self._tests = {r["variant"]: r for r in tests if r["source"] == self.source}
            self._times = {(r["variant"], r["shape_class"]): r for r in times if r["source"] == self.source}
        return self._tests

    def selftest(self, variant: str) -> Optional[dict]:
        """{"entry", "variant", "pass", "reason"} or None when this variant was never tested."""
        return self._load().get(variant)

    def timing(self, variant: str, shape_class: str) -> Optional[dict]:
        self._load()
        return self._times.get((variant, shape_class))

    def record_selftest(self, entry: str, variant: str, reason: Optional[str]) -> dict:
        r = {"source": self.source, "entry": entry[:LIMITS["entry"]], "variant": variant, "pass": reason is None,
             "reason": None if reason is None else reason[:LIMITS["reason"]]}
        self._load()[variant] = r
        self._mine[0].append(r)
        self._write()
        return r

    def record_timing(self, variant: str, shape_class: str, kernel_us: float, builtin_us: float) -> dict:
        r = {"source": self.source, "variant": variant, "shape_class": shape_class, "kernel_us": round(kernel_us, 3),
             "builtin_us": round(builtin_us, 3), "pick": "kernel" if kernel_us < builtin_us else "builtin"}
        self._load()
        self._times[(variant, shape_class)] = r
        self._mine[1].append(r)
        self._write()
        return r

    def records(self) -> Tuple[List[dict], List[dict]]:
        """(selftests, timings) known for this source: loaded from the cache or made in this process."""
        return list(self._load().values()), list(self._times.values())

    def _write(self) -> None:
        if self.path is None:
            return
        tests, times = read(self.path)
        doc = {"format": FORMAT, "selftests": _merged(tests, self._mine[0], _selftest_key),
               "timings": _merged(times, self._mine[1], _timing_key)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".verdicts-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(doc, f, indent=1)
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError:  # a read-only or full disk: the verdicts still hold for this process
            pass
