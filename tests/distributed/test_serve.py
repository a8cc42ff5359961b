"""`mlxm serve --parallel MODE` on 2 ranks (mlx.launch, ring, 127.0.0.1), this process the client: concurrent
greedy completion and chat requests (some streaming, one stream dropped mid-reply) get the single-process server's
replies; the follower prints nothing; SIGTERM to rank 0 ends every rank with exit code 0. One launch per mode: a
dense Llama in tensor and pipeline modes, a Qwen3-MoE in experts mode. And BatchGenerator's batched generation on
the paged cache in experts mode against one process; a follower lost while the server idles ends rank 0 with one
line."""

import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.app.tiny import build_tiny
from tests.distributed import batch_worker
from tests.distributed.harness import launch, rank_results
from tests.serve.conftest import Live, start_server  # noqa: F401  (the single-process server, for the replies)

WORKER = Path(__file__).with_name("serve_worker.py")
BATCH_WORKER = Path(__file__).with_name("batch_worker.py")
TIMEOUT = 240  # the whole launch: start, load, serve the requests, shut down
WAIT = 120  # for the server to answer /health
PROMPTS = [[5, 17, 33, 2, 41], [60, 61, 62, 63], [9, 8, 7, 6, 5, 4, 3, 2, 1, 70, 71, 72], [40, 50]]
CHAT = [{"role": "user", "content": "Which rank is this?"}]
MOE = dict(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], head_dim=8, num_experts=4,
           num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True, decoder_sparse_step=1,
           mlp_only_layers=[])


def ask(live: Live) -> dict:
    """The same requests, sent together: completions from token ids (two streamed), a streamed chat, and a stream
    read for 3 chunks and dropped (its client gone, the server cancels it)."""
    client = live.openai()

    def complete(i):
        if i % 2:
            chunks = client.completions.create(model=live.model_id, prompt=PROMPTS[i], max_tokens=24, temperature=0,
                                               stream=True)
            return "".join(c.choices[0].text for c in chunks if c.choices)
        reply = client.completions.create(model=live.model_id, prompt=PROMPTS[i], max_tokens=24, temperature=0)
        return reply.choices[0].text

    def chat():
        chunks = client.chat.completions.create(model=live.model_id, messages=CHAT, max_tokens=20, temperature=0,
                                                stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    def dropped():
        chunks = client.chat.completions.create(model=live.model_id, messages=CHAT, max_tokens=200, temperature=0,
                                                stream=True)
        texts = []
        for c in chunks:
            texts.append(c.choices[0].delta.content or "" if c.choices else "")
            if len(texts) == 3:
                break
        chunks.close()
        return "".join(texts)

    with ThreadPoolExecutor(6) as pool:
        futures = {f"completion {i}": pool.submit(complete, i) for i in range(len(PROMPTS))}
        futures["chat"], futures["dropped"] = pool.submit(chat), pool.submit(dropped)
        replies = {k: f.result() for k, f in futures.items()}
    # after the drop, a request alone: the ranks still agree on everything that ran
    replies["after"] = client.completions.create(model=live.model_id, prompt=PROMPTS[0], max_tokens=8,
                                                 temperature=0).choices[0].text
    return replies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(live: Live, launched: threading.Thread) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        try:
            if live.request("GET", "/health")[0] == 200:
                return
        except OSError:
            pass
        assert launched.is_alive(), "the ranks ended before serving"
        assert time.monotonic() < deadline, f"no /health answer in {WAIT} s"
        time.sleep(0.5)


def serve(folder, out: Path, port: int, mode: str, done: dict, *extra) -> threading.Thread:
    """`mlxm serve` over 2 ranks in a started thread; the launch's CompletedProcess lands in done["proc"]."""
    args = [WORKER, "serve", "-m", folder, "--port", port, "--max-batch", "4", "--parallel", mode, *extra]
    launched = threading.Thread(target=lambda: done.setdefault("proc", launch(args, out, timeout=TIMEOUT)),
                                daemon=True)
    launched.start()
    return launched


@pytest.mark.parametrize("mode, config", [("tensor", {}), ("experts", MOE), ("pipeline", {})])
def test_two_ranks_serve_the_single_process_replies(tmp_path, start_server, mode, config):  # noqa: F811
    import mlxmodels

    folder = build_tiny(tmp_path / "model", **config)
    single = ask(start_server(*mlxmodels.load(folder), model_id=str(folder)))
    assert all(single.values()), single

    out, port, done = tmp_path / "out", free_port(), {}
    launched, live = serve(folder, out, port, mode, done), Live(None, None, str(folder), port)
    try:
        wait_healthy(live, launched)
        replies = ask(live)
    finally:
        signal_rank(out, 0, signal.SIGTERM)
        launched.join(TIMEOUT)
    proc = done["proc"]
    r0, r1 = rank_results(out, proc)
    assert r0["rc"] == r1["rc"] == 0, proc.stdout[-4000:]
    assert (out / "rank1.out").read_text() == ""
    dropped = replies.pop("dropped")
    assert single.pop("dropped").startswith(dropped) and dropped, (dropped, proc.stdout[-4000:])
    assert replies == single


def test_batched_generation_in_experts_mode_gives_one_process_tokens(tmp_path):
    import mlxmodels

    folder = build_tiny(tmp_path / "model", **MOE)
    single = batch_worker.run(mlxmodels.load(folder)[0])
    proc = launch([BATCH_WORKER, folder, "experts"], tmp_path / "out", timeout=TIMEOUT)
    r0, r1 = rank_results(tmp_path / "out", proc)
    assert r0["tokens"] == r1["tokens"] == single, proc.stdout[-4000:]


def test_a_follower_lost_while_serving_ends_rank_0_with_one_line(tmp_path):
    """Rank 1 is killed while the server idles: rank 0's next idle message meets the closed connection, and its
    engine thread (which would log a failed step and serve on) ends the process with one line."""
    folder, out, port, done = build_tiny(tmp_path / "model"), tmp_path / "out", free_port(), {}
    launched = serve(folder, out, port, "tensor", done, "--parallel-timeout", "60")
    try:
        wait_healthy(Live(None, None, str(folder), port), launched)
        signal_rank(out, 1, signal.SIGKILL)
    finally:
        launched.join(TIMEOUT)
    said = [line[line.index("mlxm: error:"):] for line in done["proc"].stdout.splitlines() if "mlxm: error:" in line]
    assert len(said) == 1 and said[0].startswith("mlxm: error: another rank went away mid-run ([ring] "), said
    assert not (out / "rank0.json").exists()  # it left at once, with exit code 1


def signal_rank(out: Path, rank: int, signum: int) -> None:
    pid = out / f"rank{rank}.pid"
    if pid.exists():
        os.kill(int(pid.read_text()), signum)
