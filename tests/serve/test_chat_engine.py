"""The chat layer over the real engine, as the HTTP layer drives them: a chat prompt from the template, the engine's
events through a ReplyParser, a stop string cancelling the stream. Replies batched and cut at a stop string equal
the solo reply's text cut there, and every cancelled sequence gives its blocks back."""

import asyncio
import time

import pytest

from app.serve.chat import chat_prompt
from app.serve.reply import ReplyParser
from mlxmodels.serve import Engine, SamplingParams
from tests.app.tiny import build_tiny

WAIT = 60  # seconds a test may wait on the engine
MAX = 24


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import mlxmodels

    model, tokenizer = mlxmodels.load(build_tiny(tmp_path_factory.mktemp("chat")))
    engine = Engine(model, max_batch=4, num_blocks=64, block_size=16)
    engine.start()
    yield engine, tokenizer
    engine.close()


def params(tokenizer, max_tokens=MAX):
    return SamplingParams(max_tokens, temperature=0.0, stop_tokens=frozenset(tokenizer.eos_token_ids))


async def reply(engine, tokenizer, question: str, stop: list) -> tuple:
    """(content, the final event's finish reason, whether a stop string ended it), read as the HTTP layer reads."""
    ids, text = chat_prompt(tokenizer, [{"role": "user", "content": question}], None, {})
    stream = engine.submit(ids, params(tokenizer))
    parser, content, last = ReplyParser(tokenizer, text, stop, chat=True, tools=False), "", None
    async for event in stream:
        if event.token >= 0:
            content += parser.feed(event.token).content
        if parser.stopped:
            stream.cancel()
        last = event
    return content + parser.finish().content, last.finish_reason, parser.stopped


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, WAIT))


QUESTIONS = ["Hi", "What is 2 + 2?", "Tell me a story", "Why?"]


def test_stop_strings_over_the_engine(served):
    engine, tokenizer = served
    solo = [run(reply(engine, tokenizer, q, [])) for q in QUESTIONS]
    assert all(reason in ("stop", "length") and not stopped for _, reason, stopped in solo)
    texts = [text for text, _, _ in solo]
    assert all(len(t) >= 6 for t in texts), texts  # the tiny model says enough to cut
    stops = [[t[len(t) // 2:len(t) // 2 + 2]] for t in texts]

    async def together():
        return await asyncio.gather(*[reply(engine, tokenizer, q, s) for q, s in zip(QUESTIONS, stops)])

    for (text, reason, stopped), full, (stop,) in zip(run(together()), texts, stops):
        assert stopped and text == full[:full.find(stop)]
        assert reason in ("cancelled", "stop")  # cancelled at the next step, unless the reply had ended
    deadline = time.monotonic() + WAIT
    while engine.stats()["running"] or engine.stats()["kv_blocks_used"]:
        assert time.monotonic() < deadline, engine.stats()
        time.sleep(0.01)
