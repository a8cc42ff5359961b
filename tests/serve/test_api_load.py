"""Concurrent clients: 32 streams at once through the async openai client, some leaving mid-reply. Every reply read
to its end equals the same request served alone (no cross-talk between streams), the ones that left are cancelled,
and the pool gives every block back."""

import asyncio
import random

from tests.serve.conftest import WAIT

CLIENTS = 32
MAX_TOKENS = 24
BLOCKS = 24  # 8 rows of ~50 tokens need ~32 blocks of 16: some are preempted


def question(n: int) -> list:
    return [{"role": "user", "content": f"Question {n}: what is {n} times {n + 3}?"}]


async def read_stream(client, n: int, leave_after=None) -> str:
    """The reply's text, or None when the client leaves after `leave_after` chunks."""
    stream = await client.chat.completions.create(model="tiny", messages=question(n), max_tokens=MAX_TOKENS,
                                                  temperature=0, stream=True)
    text, chunks = "", 0
    async for chunk in stream:
        chunks += 1
        if leave_after is not None and chunks > leave_after:
            await stream.close()
            return None
        text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    return text


def test_concurrent_streams_with_disconnects(start_server, tiny):
    import openai

    live = start_server(*tiny, max_batch=8, num_blocks=BLOCKS)  # a short pool: preemption under load too
    client = live.openai()
    alone = [client.chat.completions.create(model="tiny", messages=question(n), max_tokens=MAX_TOKENS,
                                            temperature=0).choices[0].message.content for n in range(CLIENTS)]
    assert len(set(alone)) > CLIENTS // 2  # the questions get different replies: cross-talk would show
    rng = random.Random(0)
    leave = [rng.randrange(1, 6) if rng.random() < 0.3 else None for _ in range(CLIENTS)]

    async def together():
        aclient = openai.AsyncOpenAI(base_url=live.url, api_key="none", timeout=WAIT, max_retries=0)
        async with aclient:
            return await asyncio.wait_for(
                asyncio.gather(*[read_stream(aclient, n, leave[n]) for n in range(CLIENTS)]), WAIT)

    before = live.wait_idle()
    replies = asyncio.run(together())
    assert sum(r is None for r in replies) == sum(x is not None for x in leave) > 0
    for n, reply in enumerate(replies):
        if reply is not None:
            assert reply == alone[n], n
    stats = live.wait_idle()
    assert stats["preemptions_total"] > before["preemptions_total"]
    # the clients that left were cancelled mid-reply: fewer tokens were made than when every reply ran alone
    during = stats["generation_tokens_total"] - before["generation_tokens_total"]
    assert during < before["generation_tokens_total"]
    assert stats["kv_blocks_free"] == BLOCKS and stats["running"] == 0
