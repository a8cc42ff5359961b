"""One rank of `mlxm serve --parallel MODE ...` (the arguments after this script's name) under mlx.launch, for
test_serve.py: it writes its pid (the test signals rank 0), sends a follower's own stdout and stderr (file
descriptors, so that native writes count too) to `rank{r}.out`, which must stay empty, and records its exit code."""

import os
import sys
from pathlib import Path

import mlxmodels  # noqa: F401  (first: it picks the BLAS before mlx.core loads)
import mlx.core as mx

from app import cli
from tests.distributed.harness import write_result

rank = mx.distributed.init().rank()
out = Path(os.environ["MLXMODELS_TEST_OUT"])
(out / f"rank{rank}.pid").write_text(str(os.getpid()))
if rank != 0:
    said = os.open(out / f"rank{rank}.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(said, 1)
    os.dup2(said, 2)
rc = cli.main(sys.argv[1:])
write_result({"rc": rc})
sys.exit(rc)
