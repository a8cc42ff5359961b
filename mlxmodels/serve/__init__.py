"""The serving engine behind `mlxm serve`: continuous batching on one thread, requests as event streams.

    engine = Engine(model, max_batch=8)
    engine.start()
    stream = engine.submit(prompt_ids, SamplingParams(max_tokens=64, temperature=0.7))
    for event in stream: ...        # or `async for` on an event loop
    engine.close()
"""

from ..row_sampling import SamplingParams
from .engine import Engine, QueueFull
from .stream import Event, Stream

__all__ = ["Engine", "Event", "QueueFull", "SamplingParams", "Stream"]
