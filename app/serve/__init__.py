"""`mlxm serve`: an OpenAI-compatible HTTP server (Starlette on uvicorn) over one engine thread.

The HTTP layer (app.py, schemas.py, errors.py) validates requests and speaks OpenAI's wire format; chat.py renders
messages and tools through the model's chat template and turns the reply's text back into content, reasoning and
tool calls; the engine (mlxmodels/serve/engine.py) owns the one BatchGenerator and steps it on its own thread, so
the event loop never waits on MLX. Prefix caching lives in the block pool (mlxmodels/parts/block_pool.py).
"""
