"""What every mode's 2-rank test asserts of each rank against the single-process model: the same logits for
prefill and cached decode (float32, within `tol`), the same greedy tokens, the same speculative MTP tokens."""

import numpy as np


def assert_ranks_match(folder, index: int, ranks: list, want: dict, arrays: dict, tol: float = 1e-4) -> None:
    """ranks: each rank's result (harness.rank_results), holding the worker's results under str(folder) and its
    arrays as "{index}.{key}"; want/arrays: what the same worker's `run` gave on the single-process model."""
    for rank, got in enumerate(ranks):
        mine = got[str(folder)]
        for key in arrays:
            err = np.abs(got["arrays"][f"{index}.{key}"] - np.array(arrays[key])).max()
            assert err <= tol, f"{folder.name} rank {rank}: {key} logits off by {err}"
        assert mine["greedy"] == want["greedy"], f"{folder.name} rank {rank}: greedy tokens differ"
        assert mine.get("speculative") == want.get("speculative"), f"{folder.name} rank {rank}: MTP drafts differ"
