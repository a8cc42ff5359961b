"""`--parallel MODE` for `mlxm generate` and `mlxm chat` (its turns: app/parallel_chat.py) under mlx.launch: every
rank runs the same command; rank 0 owns the terminal and decides (prompt tokens, seed, each sampled token), the
others compute their share of every forward pass, follow rank 0's tokens and print nothing.

Errors stay one line on rank 0 with every rank exiting 1: those the ranks find together (ParallelError: models
that differ, a share that does not fit, a mode that does not apply) are said by rank 0 alone; a follower's own
mistake (a missing folder on that Mac) is said by it, naming its rank, since rank 0 cannot know it; a lost rank
ends every survivor through the watchdog (mlxmodels/distributed/watchdog.py) or the ring's own error.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Optional

MODES = ("pipeline", "tensor", "experts", "auto")
LOST = ("[ring]", "[jaccl]", "[mpi]")  # how MLX's backends begin the error a closed connection raises

_follower = None  # (rank, the real stderr) on ranks other than 0, whose sys.stdout/sys.stderr are silenced


def add_flags(p) -> None:
    from app.flags import positive_float

    g = p.add_argument_group("several Macs (under mlx.launch)")
    g.add_argument("--parallel", choices=MODES, default=None,
                   help="split the model over the ranks mlx.launch started: pipeline (layer ranges), tensor "
                        "(heads and FFN columns), experts (routed experts), auto (chosen from the model and each "
                        "rank's memory); rank 0 prints, the others follow (docs/DISTRIBUTED.md)")
    g.add_argument("--parallel-timeout", type=positive_float, default=None, metavar="SECONDS",
                   help="stop every rank when the others give no sign for this long (a lost rank; default "
                        "$MLXM_PARALLEL_TIMEOUT or 120)")


class Run:
    """This process's place in the group: silences a follower, leads or follows the token stream, and watches for
    a lost rank once the model is loaded."""

    def __init__(self, group, timeout: float):
        from mlxmodels.distributed.watchdog import Watchdog

        self.group, self.rank = group, group.rank()
        self.watchdog = Watchdog(timeout, self._lost)

    def share(self, ids: list, seed: Optional[int]) -> tuple:
        """rank 0's prompt ids and seed on every rank; from here on the watchdog counts."""
        from mlxmodels.distributed.follow import share_seed, share_tokens

        ids, seed = share_tokens(self.group, ids), share_seed(self.group, seed)
        self.watchdog.arm()
        return ids, seed

    def sampler(self, sampling: dict):
        from mlxmodels.distributed.follow import leading
        from mlxmodels.generate import make_sampler

        return leading(make_sampler(sampling["temperature"], sampling["top_k"], sampling["top_p"],
                                    sampling["min_p"]), self.group)

    def close(self) -> None:
        """A last all_sum as a barrier: generate_step leaves one step queued, and a rank that exits while a peer
        still runs it closes the sockets under that peer (the watchdog still bounds the wait)."""
        import mlx.core as mx

        mx.eval(mx.distributed.all_sum(mx.zeros((1,)), group=self.group))
        self.watchdog.close()

    def _lost(self) -> None:
        from mlxmodels.distributed.watchdog import exit_with

        exit_with(f"mlxm: error: {_rank_prefix()}no word from the other ranks for {self.watchdog.timeout:g} s (a "
                  "rank was lost, stopped or cut off); stopping (--parallel-timeout sets the wait)",
                  _follower[1] if _follower else sys.stderr)


def start(args) -> Run:
    """Join the group mlx.launch set up (a single process is a group of one) and silence the followers."""
    import mlx.core as mx

    from mlxmodels.distributed.watchdog import timeout_from_env

    global _follower
    timeout = args.parallel_timeout if args.parallel_timeout else timeout_from_env()
    group = mx.distributed.init()
    if group.rank() != 0 and _follower is None:
        _follower = (group.rank(), sys.stderr)
        sys.stdout = sys.stderr = open(os.devnull, "w")
    return Run(group, timeout)


def error_line(line: str, e: BaseException) -> Optional[str]:
    """What this rank prints for a user error `line` (None: nothing). On a follower, ParallelError is said by
    rank 0 (every rank raised it alike) and anything else is prefixed with the follower's rank."""
    from mlxmodels.distributed import ParallelError

    if _follower is None:
        return line
    if isinstance(e, ParallelError):
        return None
    return line.replace("mlxm: error: ", f"mlxm: error: {_rank_prefix()}", 1)


FOLLOWER_GRACE = 3.0  # seconds a follower waits before its own line: mlx.launch ends it first if rank 0 failed too


def say_error(line: str, e: BaseException) -> None:
    """Print this rank's line for a user error. A follower waits a moment first: the same files on every Mac give
    every rank the same mistake, and then rank 0's line is the one to read (mlx.launch stops the other ranks
    when rank 0 exits 1); a mistake of this Mac alone is still said, late by that moment."""
    out = error_line(line, e)
    if out is not None and _follower:
        time.sleep(FOLLOWER_GRACE)
    if out is not None:
        print(out, file=_follower[1] if _follower else sys.stderr)


def lost_rank(e: RuntimeError) -> Optional[str]:
    """The one line for a backend error that means a rank went away (None for any other RuntimeError)."""
    text = str(e)
    if not text.startswith(LOST):
        return None
    return (f"mlxm: error: {_rank_prefix()}another rank went away mid-run ({text}); stopping; see that rank's "
            "line or mlx.launch's warning for why")


def _rank_prefix() -> str:
    return f"rank {_follower[0]}: " if _follower else ""
