"""Random inputs for self-tests and timings, drawn from a key of their own: deciding whether to run a kernel must not
move MLX's global random state, which a user (or a test) may have seeded for something else."""

import mlx.core as mx

_key = []


def _next() -> mx.array:
    if not _key:
        _key.append(mx.random.key(0))
    _key[0], sub = mx.random.split(_key[0])
    return sub


def normal(shape) -> mx.array:
    return mx.random.normal(shape, key=_next())


def uniform(low: float, high: float, shape) -> mx.array:
    return mx.random.uniform(low, high, shape, key=_next())


def randint(low: int, high: int, shape) -> mx.array:
    return mx.random.randint(low, high, shape, key=_next())


def permutation(n: int) -> mx.array:
    return mx.random.permutation(n, key=_next())
