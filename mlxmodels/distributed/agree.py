"""Ranks that load different models (another folder, another revision) must stop before computing garbage together."""

import mlx.core as mx
import numpy as np

from .layout import ParallelError


def agree(group, digest: bytes, what: str) -> None:
    """Every rank passes the digest of what it loaded; all raise one ParallelError if any differs."""
    if group.size() == 1:
        return
    mine = mx.array(np.frombuffer(digest, dtype=np.uint8))[None]  # (1, 32)
    every = np.array(mx.distributed.all_gather(mine, group=group))  # (size, 32)
    differ = [r for r in range(group.size()) if not np.array_equal(every[r], every[0])]
    if differ:
        raise ParallelError(f"rank {differ[0]} loaded a different {what} than rank 0 (config.json or tensors "
                            "differ); give every rank the same model files")
