"""Leaving and stopping: a client that leaves a reply, streamed or whole, cancels it; `mlxm serve` in a real
process exits 0 on SIGINT and SIGTERM; a shutdown lets replies in flight finish for the grace time, then cancels
them, each stream ending with an error event and [DONE]."""

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.app.pilot import SlowModel
from tests.serve.conftest import WAIT

LONG = 200  # tokens a slow reply would take seconds to make


def slow(tiny):
    return SlowModel(tiny[0], delay=0.03), tiny[1]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_leaving_a_reply_cancels_it(start_server, tiny, stream):
    """The client sends its request and goes, reading nothing (a streamed reply's first chunk never asked for)."""
    live = start_server(*slow(tiny))
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=WAIT)
    conn.request("POST", "/v1/completions", body=json.dumps({"prompt": "abc", "max_tokens": LONG, "stream": stream}),
                 headers={"Content-Type": "application/json"})
    deadline = time.monotonic() + WAIT
    while live.engine.stats()["running"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    stats = live.wait_idle()
    assert 0 < stats["generation_tokens_total"] < LONG // 2  # stopped soon after the client left


def read_events(response) -> list:
    """The SSE events of a streamed reply, [DONE] included, as decoded objects (or the string "[DONE]")."""
    events = []
    for line in response:
        line = line.decode().strip()
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_shutdown_cancels_what_outlasts_the_grace(monkeypatch, tiny):
    import uvicorn  # noqa: F401  (make_server imports it; here so a missing uvicorn fails as an import)

    from app.serve import server as server_mod
    from app.serve.app import build_app
    from mlxmodels.serve import Engine

    monkeypatch.setattr(server_mod, "GRACE", 0.3)
    model, tokenizer = slow(tiny)
    engine = Engine(model, max_batch=2, num_blocks=64)
    engine.start()
    sock = server_mod.bind("127.0.0.1", 0)
    server = server_mod.make_server(build_app(engine, tokenizer, "tiny"), sock, engine.close, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        conn = http.client.HTTPConnection("127.0.0.1", sock.getsockname()[1], timeout=WAIT)
        conn.request("POST", "/v1/completions", body=json.dumps({"prompt": "abc", "max_tokens": LONG, "stream": True}),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        server.handle_exit(signal.SIGTERM, None)  # what the signal handler calls
        events = read_events(response)
        thread.join(WAIT)
        assert not thread.is_alive()
    finally:
        engine.close()
    assert events[-1] == "[DONE]" and events[-2]["error"]["type"] == "server_error"
    texts = [e["choices"][0]["text"] for e in events[:-2]]
    assert 0 < len(texts) < LONG  # it was cut, after the grace time
    assert server._captured_signals == []  # nothing re-raised after the shutdown: the process exits 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_mlxm_serve_exits_0_on_signal(tiny_folder, sig):
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "-m", str(tiny_folder), "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.monotonic() + WAIT
        while port is None:  # the start-up line names the port
            assert time.monotonic() < deadline and proc.poll() is None, "the server did not start"
            line = proc.stderr.readline()
            if line.startswith("mlxm serve:"):
                port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        conn.request("POST", "/v1/completions", body=json.dumps({"prompt": "abc", "max_tokens": 8, "temperature": 0,
                                                                     "stream": True}),
                     headers={"Content-Type": "application/json"})
        events = read_events(conn.getresponse())
        assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
        proc.send_signal(sig)
        assert proc.wait(WAIT) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_one_line_error(args, *words):
    run = subprocess.run([sys.executable, "-m", "app.cli", "serve", *args], capture_output=True, text=True,
                         timeout=WAIT)
    assert run.returncode == 1, run.stderr
    line = run.stderr.strip()
    assert line.startswith("mlxm: error: ") and "\n" not in line and all(w in line for w in words), line


def test_start_up_mistakes_are_one_line(tiny_folder):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert_one_line_error(["-m", str(tiny_folder), "--port", str(port)], f"127.0.0.1:{port}", "--port")
    assert_one_line_error(["-m", str(tiny_folder), "--port", "0", "--context", "100000"], "--context", "256")
    assert_one_line_error(["-m", str(tiny_folder), "--port", "0", "--host", "no.such.host.invalid"], "--host")
