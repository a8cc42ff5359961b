"""`mlxm info -m org/name` against a fake Hugging Face Hub on 127.0.0.1: it fetches config, tokenizer and index, and
only the shards' headers by range requests, never a shard; and it prints what `info` prints for the local folder."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlxmodels.formats.safetensors import INDEX

ROOT = Path(__file__).resolve().parents[2]
REPO = "fake-org/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub(BaseHTTPRequestHandler):
    """The Hub's model-info API and resolve endpoint over one folder, logging (method, path, Range) of each request.
    Class attributes `folder` and `log` are set per server."""

    folder: Path
    log: list

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool):
        self.log.append((self.command, self.path, self.headers.get("Range")))
        path = self.path.split("?")[0]
        if path in (f"/api/models/{REPO}", f"/api/models/{REPO}/revision/main",
                    f"/api/models/{REPO}/revision/{COMMIT}"):
            files = sorted(p.name for p in self.folder.iterdir())
            data = json.dumps({"id": REPO, "modelId": REPO, "sha": COMMIT, "private": False,
                               "siblings": [{"rfilename": f} for f in files]}).encode()
            return self._reply(200, data, {"Content-Type": "application/json"}, body)
        if path == f"/api/models/{REPO}/tree/{COMMIT}":
            data = json.dumps([{"type": "file", "path": p.name, "size": p.stat().st_size,
                                "oid": hashlib.sha1(p.read_bytes()).hexdigest()}
                               for p in sorted(self.folder.iterdir())]).encode()
            return self._reply(200, data, {"Content-Type": "application/json"}, body)
        m = re.fullmatch(rf"/{REPO}/resolve/(main|{COMMIT})/([^/]+)", path)
        if m is None or not (self.folder / m.group(2)).is_file():
            return self._reply(404, b"not found", {"X-Error-Code": "EntryNotFound"}, body)
        data = (self.folder / m.group(2)).read_bytes()
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Content-Type": "application/octet-stream"}
        rng = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range") or "")
        if rng and self.command == "GET":
            lo, hi = int(rng.group(1)), min(int(rng.group(2)), len(data) - 1)
            headers["Content-Range"] = f"bytes {lo}-{hi}/{len(data)}"
            return self._reply(206, data[lo:hi + 1], headers, body)
        return self._reply(200, data, headers, body)

    def _reply(self, status, data, headers, body):
        self.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)


@pytest.fixture
def hub(tiny_folder, tmp_path):
    """A sharded copy of the tiny model served as REPO: (env for mlxm, request log, the served folder)."""
    from mlxmodels.formats.safetensors import Checkpoint, save_file

    served = tmp_path / "served"
    served.mkdir()
    for f in tiny_folder.iterdir():
        if not f.name.endswith(".safetensors"):
            (served / f.name).write_bytes(f.read_bytes())
    ckpt = Checkpoint(tiny_folder)
    names = sorted(ckpt.where)
    halves = {"model-00001-of-00002.safetensors": names[:len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, part in halves.items():
        save_file(served / shard, {n: ckpt.array(n) for n in part})
    ckpt.close()
    (served / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": {n: s for s, p in halves.items()
                                                                          for n in p}}))
    log = []
    handler = type("Hub", (FakeHub,), {"folder": served, "log": log})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}", HF_HOME=str(tmp_path / "hf"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1", NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    yield env, log, served
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def info(model, env=None):
    return subprocess.run([sys.executable, "-m", "app.cli", "info", "-m", str(model)], capture_output=True,
                          text=True, cwd=ROOT, env=env or dict(os.environ), timeout=120)


def without_model_line(text: str) -> list:
    return [line for line in text.splitlines() if not line.startswith("model ")]


def test_info_on_a_hub_id_reads_only_shard_headers(hub):
    env, log, served = hub
    remote = info(REPO, env)
    assert remote.returncode == 0, remote.stderr
    local = info(served)
    assert local.returncode == 0, local.stderr
    assert without_model_line(remote.stdout) == without_model_line(local.stdout)
    assert remote.stdout.splitlines()[0].split() == ["model", REPO]
    shard_requests = [(m, p, r) for m, p, r in log if p.split("?")[0].endswith(".safetensors")]
    assert shard_requests, log
    for method, path, rng in shard_requests:  # each one a GET of a byte range at most 100 KB long
        assert method == "GET" and rng is not None, (method, path, rng)
        lo, hi = map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", rng).groups())
        assert hi - lo < 100_000
    assert {p.rsplit("/", 1)[-1] for _, p, _ in shard_requests} == {"model-00001-of-00002.safetensors",
                                                                   "model-00002-of-00002.safetensors"}
    fetched = {p.rsplit("/", 1)[-1] for m, p, _ in log if m == "GET" and "/resolve/" in p
               and not p.endswith(".safetensors")}
    assert {"config.json", INDEX, "tokenizer.json", "tokenizer_config.json"} <= fetched
    cached = {p.name for p in (Path(env["HF_HOME"]) / "hub").rglob("*") if p.is_file()}
    assert not any(n.endswith(".safetensors") for n in cached), cached


def test_info_on_a_hub_id_refuses_a_server_that_ignores_ranges(hub, monkeypatch):
    """A server answering the whole file (200) to a range request: info stops at the status line, in one line.
    The server runs in this process, so the patched handler is what the subprocess meets."""
    env, log, _ = hub
    original = FakeHub._serve

    def no_ranges(self, body):
        if self.path.endswith(".safetensors"):
            del self.headers["Range"]
        return original(self, body)

    monkeypatch.setattr(FakeHub, "_serve", no_ranges)
    run = info(REPO, env)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if "mlxm" in line]  # after huggingface_hub's progress bars
    assert len(lines) == 1 and "HTTP 200" in lines[0] and "whole shard" in lines[0], run.stderr


def test_info_on_a_hub_id_without_an_index_lists_the_shards(hub):
    """No model.safetensors.index.json: the shards are the repo's top-level *.safetensors, from the model-info API."""
    env, log, served = hub
    (served / INDEX).unlink()
    remote = info(REPO, env)
    assert remote.returncode == 0, remote.stderr
    assert without_model_line(remote.stdout) == without_model_line(info(served).stdout)
    assert all(r is not None for m, p, r in log if p.endswith(".safetensors"))
