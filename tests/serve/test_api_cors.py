"""CORS (`mlxm serve --cors-origin`): off by default; with origins, browser preflights are answered before the API
key check and responses name the allowed origin. Driven through the ASGI app itself: these routes never reach the
engine, so none is started."""

from __future__ import annotations

import asyncio

from app.cli import parser
from app.serve.app import build_app

PAGE = "http://localhost:3000"


def call(app, method: str, path: str, headers: dict) -> tuple[int, dict]:
    """One ASGI request -> (status, response headers with lower-case names)."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 5000),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}


def preflight(origin: str) -> dict:
    return {"Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"}


def test_no_cors_by_default():
    app = build_app(None, None, "tiny", api_key="k")
    status, headers = call(app, "OPTIONS", "/v1/chat/completions", preflight(PAGE))
    assert status in (401, 405) and "access-control-allow-origin" not in headers
    status, headers = call(app, "GET", "/health", {"Origin": PAGE})
    assert status == 200 and "access-control-allow-origin" not in headers


def test_cors_origin_preflight_before_the_key():
    app = build_app(None, None, "tiny", api_key="k", cors_origins=[PAGE, "https://ui.example"])
    status, headers = call(app, "OPTIONS", "/v1/chat/completions", preflight(PAGE))
    assert status == 200 and headers["access-control-allow-origin"] == PAGE
    assert "POST" in headers["access-control-allow-methods"]
    assert "authorization" in headers["access-control-allow-headers"].lower()
    status, headers = call(app, "GET", "/health", {"Origin": "https://ui.example"})
    assert status == 200 and headers["access-control-allow-origin"] == "https://ui.example"
    # another site is not allowed, and a request without the key is still refused
    status, headers = call(app, "OPTIONS", "/v1/chat/completions", preflight("https://evil.example"))
    assert status == 400 and "access-control-allow-origin" not in headers
    status, headers = call(app, "GET", "/v1/models", {"Origin": PAGE})
    assert status == 401 and headers["access-control-allow-origin"] == PAGE


def test_cors_any_origin_only_when_asked():
    app = build_app(None, None, "tiny", cors_origins=["*"])
    status, headers = call(app, "GET", "/health", {"Origin": "https://anything.example"})
    assert status == 200 and headers["access-control-allow-origin"] == "*"


def test_cors_origin_flag():
    assert parser().parse_args(["serve"]).cors_origin == []
    args = parser().parse_args(["serve", "--cors-origin", PAGE, "--cors-origin", "*"])
    assert args.cors_origin == [PAGE, "*"]
