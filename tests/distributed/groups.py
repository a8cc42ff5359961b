"""A stand-in for an mx.distributed group where no collective runs (a Layout's spec and placements in process)."""


class Group:
    """What a Layout asks of a group: its rank and size."""

    def __init__(self, rank: int, size: int):
        self._rank, self._size = rank, size

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size
