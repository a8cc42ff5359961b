"""A live `mlxm serve` app for the API tests: the tiny chat model, a real engine, uvicorn on a free 127.0.0.1 port in
a thread. Every wait is bounded (WAIT seconds)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from tests.app.conftest import tiny, tiny_folder  # noqa: F401  (the app tests' tiny chat model, built once)

WAIT = 60  # seconds any test may wait on the server


class Live:
    """A running server: its base URL, engine and tokenizer, and raw HTTP requests to it."""

    def __init__(self, engine, tokenizer, model_id, port):
        self.engine, self.tokenizer, self.model_id, self.port = engine, tokenizer, model_id, port
        self.url = f"http://127.0.0.1:{port}/v1"

    def request(self, method: str, path: str, body=None, headers=None):
        """-> (status, parsed JSON or text, headers); `body` a dict is sent as JSON, bytes as they are."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        raw = response.read().decode()
        conn.close()
        is_json = response.getheader("content-type", "").startswith("application/json")
        return response.status, (json.loads(raw) if is_json else raw), dict(response.getheaders())

    def post(self, path: str, body, **headers):
        status, out, _ = self.request("POST", path, body, headers)
        return status, out

    def openai(self, **kwargs):
        import openai

        return openai.OpenAI(base_url=self.url, api_key=kwargs.pop("api_key", "none"), timeout=WAIT, max_retries=0,
                             **kwargs)

    def wait_idle(self) -> dict:
        """Until nothing runs or holds a KV block (cancellations apply at the engine's next step)."""
        deadline = time.monotonic() + WAIT
        while True:
            stats = self.engine.stats()
            if not (stats["running"] or stats["waiting"] or stats["kv_blocks_used"]):
                return stats
            assert time.monotonic() < deadline, stats
            time.sleep(0.01)


@pytest.fixture
def start_server():
    """start_server(model, tokenizer, api_key=None, defaults=None, **engine options) -> Live, stopped afterwards."""
    import uvicorn

    from app.serve.app import build_app
    from mlxmodels.serve import Engine

    running = []

    def start(model, tokenizer, api_key=None, defaults=None, model_id="tiny", **options):
        engine = Engine(model, **{"max_batch": 4, "num_blocks": 96, **options})
        engine.start()
        app = build_app(engine, tokenizer, model_id, api_key=api_key, defaults=defaults)
        sock = socket.create_server(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread, engine))
        deadline = time.monotonic() + WAIT
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        return Live(engine, tokenizer, model_id, sock.getsockname()[1])

    yield start
    for server, thread, engine in running:
        server.should_exit = True
        engine.close()
        thread.join(WAIT)


@pytest.fixture
def live(start_server, tiny):
    return start_server(*tiny)
