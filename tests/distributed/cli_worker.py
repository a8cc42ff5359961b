"""One rank of `mlxm generate --parallel MODE ...` (the arguments after this script's name) under mlx.launch, for
test_cli.py. It records its exit code and the tokens it generated in its result, and takes faults by environment:

MLXM_TEST_RANK1_MODEL=DIR   rank 1 loads DIR instead (ranks that disagree on the model)
MLXM_TEST_RANK1_MEMORY=N    rank 1 may hold N bytes (a rank whose share does not fit)
MLXM_TEST_STOP_RANK1=K      rank 1 stops itself (SIGSTOP: alive, sockets open, silent) at its K-th token
"""

import os
import signal
import subprocess
import sys

import mlxmodels  # noqa: F401  (first: it picks the BLAS before mlx.core loads)
import mlx.core as mx

from app import cli
from tests.distributed.harness import write_result

rank = mx.distributed.init().rank()
argv = sys.argv[1:]
if rank == 1 and os.environ.get("MLXM_TEST_RANK1_MODEL"):
    argv[argv.index("-m") + 1] = os.environ["MLXM_TEST_RANK1_MODEL"]
if rank == 1 and os.environ.get("MLXM_TEST_RANK1_MEMORY"):
    os.environ["MLXM_RANK_MEMORY"] = os.environ["MLXM_TEST_RANK1_MEMORY"]

tokens = []
stream_generate = mlxmodels.stream_generate


def recording(*args, **kwargs):
    for r in stream_generate(*args, **kwargs):
        tokens.append(r.token)
        if rank == 1 and len(tokens) == int(os.environ.get("MLXM_TEST_STOP_RANK1", 0)):
            # killed 8 s from now (a stopped process ignores mlx.launch's SIGTERM, which would hang the launch);
            # rank 0's watchdog must have ended it long before the socket closes
            subprocess.Popen(["sh", "-c", f"sleep 8; kill -9 {os.getpid()}"], start_new_session=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        yield r


mlxmodels.stream_generate = recording
rc = cli.main(argv)
write_result({"rc": rc, "tokens": tokens})
sys.exit(rc)
