"""`mlxm serve --parallel MODE` under mlx.launch: rank 0 binds the socket and serves as a single process does, its
engine leading (mlxmodels/distributed/follow_engine.py); every other rank loads its share, opens no socket and
replays rank 0's engine until rank 0 shuts down (SIGINT/SIGTERM to rank 0: every rank then exits 0).

A rank lost while serving ends rank 0 with one line: through the watchdog when the rank is silent, or at once when
its connection closes (the engine thread would otherwise log the error and serve on with a group that is gone).
"""

from __future__ import annotations

import signal


def lead(run):
    """Rank 0's engine collaborator (Engine(lead=...)); the watchdog counts from here (every rank has loaded)."""
    from mlxmodels.distributed.follow_engine import Lead

    run.watchdog.arm()
    return Lead(run.group, pet=run.watchdog.pet, lost=_stop_if_lost)


def follow(run, args) -> None:
    """A follower's whole `mlxm serve`: its share of the model, then rank 0's engine replayed."""
    from mlxmodels.distributed.follow_engine import follow as replay

    from app import model_arg

    # Ctrl+C in a terminal reaches every local rank: rank 0 leads the shutdown, a follower waits for its word
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    model, _, _ = model_arg.load(args.model, args.dtype, args.adapter_path, parallel=args.parallel)
    run.watchdog.arm()
    replay(run.group, model, pet=run.watchdog.pet, lost=_stop_if_lost)
    run.watchdog.close()


def _stop_if_lost(e: Exception) -> None:
    from mlxmodels.distributed.watchdog import exit_with

    from app.parallel import lost_rank

    line = lost_rank(e)
    if line:
        exit_with(line)
