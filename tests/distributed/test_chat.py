"""`mlxm chat --parallel tensor` on 2 ranks: rank 0's TUI (driven headless) sends three messages, stopping the
second reply with Esc; the follower replays every turn (rewinding its cache as rank 0's session does), both ranks
generate the same tokens, and rank 0's replies are one process's chat cut at the same tokens."""

from pathlib import Path

import pytest

import mlxmodels
from app.chat_session import ChatSession
from app.chat_store import Chat, Sampling
from tests.app.tiny import build_tiny
from tests.distributed.chat_worker import MESSAGES, STOP_AT
from tests.distributed.harness import launch, rank_results

WORKER = Path(__file__).with_name("chat_worker.py")
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny"))


def test_the_follower_replays_rank_0s_chat_turns(tmp_path, folder):
    out = tmp_path / "out"
    proc = launch([WORKER, "chat", "-m", folder, "--parallel", "tensor", "--max-tokens", str(MAX_TOKENS)], out,
                  timeout=120, env={"MLXM_DATA_DIR": str(tmp_path / "data")})
    r0, r1 = rank_results(out, proc)
    assert r0["rc"] == r1["rc"] == 0, proc.stdout
    assert len(r0["turns"]) == len(MESSAGES) and r0["turns"] == r1["turns"]
    assert STOP_AT <= len(r0["turns"][1]) < MAX_TOKENS and r0["replies"][1]["stopped"]  # Esc stopped every rank
    model, tokenizer = mlxmodels.load(folder)
    session = ChatSession(model, tokenizer, 256, Chat(settings=Sampling(max_tokens=MAX_TOKENS).to_dict()))
    for message, tokens in zip(MESSAGES, r0["turns"]):
        session.add_user(message)
        mine = []
        for r in session.reply(session.prepare()):
            mine.append(r.token)
            if len(mine) == len(tokens):
                break
        assert mine == tokens
    assert [m["content"] for m in r0["replies"]] == [m["content"] for m in session.messages if m["role"] == "assistant"]


def test_switching_models_in_a_parallel_chat_is_refused_in_one_line():
    from app.parallel_chat import refuse_switch
    from mlxmodels.config import ModelError

    with pytest.raises(ModelError, match="^switching models needs every rank to load the new one; quit and start "
                                         "mlx.launch again with -m Qwen/Qwen3-8B$"):
        refuse_switch("Qwen/Qwen3-8B", dtype=None, context=None)
