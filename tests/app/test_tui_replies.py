"""Replies as a daily tool (issue 15 item 4): stats under every reply on demand, a long prompt's progress, copying
a reply or its code, exporting the chat, the hint when a greedy regenerate repeats itself."""

import threading

from app.chat_store import ChatStore
from app.reply_stats import STATS_KEYS
from app.tui_widgets import AssistantMessage, Notice, ReplyStats
from tests.app.pilot import SIZE, SlowModel, make_app, run, send, until
from tests.app.test_tui_daily import palette


def shown_stats(app) -> list:
    return [str(w.render()) for w in app.query(ReplyStats) if w.display and w.styles.display != "none"]


def notices(app) -> list:
    return [str(w.render()) for w in app.query(Notice)]


def test_stats_are_kept_with_each_reply_and_shown_on_demand(tiny):
    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "hello")
            reply = app.session.messages[-1]
            stats = reply["stats"]
            assert set(stats) == set(STATS_KEYS)
            cache = len(app.session.cache_tokens)  # the prompt, then the reply
            assert stats["prompt_tokens"] + stats["generation_tokens"] == cache and stats["generation_tokens"] > 1
            assert stats["prompt_tps"] > 0 and stats["generation_tps"] > 0 and stats["ttft"] > 0
            assert shown_stats(app) == []  # hidden until asked for
            await pilot.press("ctrl+s")
            await pilot.pause()
            line = f"{stats['generation_tokens']} tokens at {stats['generation_tps']:.1f} tok/s"
            assert len(shown_stats(app)) == 1 and shown_stats(app)[0].startswith(line)
            await send(pilot, "again")  # a new reply shows its stats too, and its prompt is only what it added
            second = app.session.messages[-1]["stats"]
            assert len(shown_stats(app)) == 2
            reused = len(app.session.cache_tokens) - second["prompt_tokens"] - second["generation_tokens"]
            assert reused >= stats["prompt_tokens"]
            await palette(pilot, "Toggle reply stats")
            assert shown_stats(app) == []
            saved = ChatStore().load(app.session.chat.id).messages
            assert [m.get("stats") for m in saved if m["role"] == "assistant"] == [stats, second]
    run(scenario())


def test_stats_at_60x20_and_for_a_reply_saved_without_them(tiny):
    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=(60, 20)) as pilot:  # a small terminal: the line wraps, nothing is cut
            await send(pilot, "hello")
            app.session.messages.insert(1, {"role": "assistant", "content": "an old reply"})
            app.session.messages.insert(2, {"role": "user", "content": "and then"})
            await app.render_log()
            await pilot.press("ctrl+s")
            await pilot.pause()
            lines = shown_stats(app)
            assert lines[0] == ""  # no stats kept: an empty line, never a failure
            assert "first token after" in lines[1]
            widget = [w for w in app.query(ReplyStats) if w.index == 3][0]
            assert widget.region.height >= 2 and widget.region.width <= 60
    run(scenario())


class GatedModel(SlowModel):
    """The tiny model, holding the second chunk of a prompt until the test opens the gate."""

    def __init__(self, model):
        super().__init__(model, 0.0)
        self.gate, self.chunks = threading.Event(), 0

    def __call__(self, x, cache=None):
        if x.shape[1] > 1:
            self.chunks += 1
            if self.chunks == 2:
                self.gate.wait(20)
        return self.model(x, cache=cache)


def test_a_long_prompt_shows_its_progress_in_the_reply(tiny):
    model = GatedModel(tiny[0])
    app = make_app(tiny, limit=4096, model=model)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            text = "many words " * 120  # 1,320 characters, a token each
            app.query_one("#input").text = text
            await pilot.press("enter")
            reply = None
            await until(pilot, lambda: (reply := app._reply) is not None and reply.placeholder != "…")
            total = len(app.session.encode())  # the reply is not in the chat yet: this is the prompt
            assert total > 1024 and app._reply.placeholder == f"prompt 512 / {total:,} tokens"
            model.gate.set()
            await until(pilot, lambda: app.turns == 1 and not app.generating)
            assert isinstance(app.query(AssistantMessage).last(), AssistantMessage)
            assert app.query(AssistantMessage).last().placeholder is None  # the answer replaced it
    run(scenario())


async def regenerated(app) -> list:
    """Run `app`, send a message, regenerate the reply: -> the notices shown."""
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "hello")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: app.turns == 2 and not app.generating)
        await pilot.pause()
        return notices(app)


def run_all(*scenarios) -> list:
    seen = []

    async def all_of():
        for scenario in scenarios:
            seen.append(await scenario)
    run(all_of())
    return seen


def test_a_greedy_regenerate_that_repeats_itself_says_why(tiny):
    shown, = run_all(regenerated(make_app(tiny, temperature=0.0)))
    assert any("greedy (temperature 0)" in n and "Settings" in n for n in shown)


def test_no_hint_for_a_different_or_a_stopped_reply():
    from app.chat_store import Sampling
    from app.greedy_hint import same_reply_hint

    greedy, reply = Sampling(temperature=0.0), {"role": "assistant", "content": "yes"}
    assert same_reply_hint(reply, dict(reply), greedy)
    assert not same_reply_hint(reply, {**reply, "content": "no"}, greedy)
    assert not same_reply_hint(reply, {**reply, "reasoning_content": "hm"}, greedy)
    assert not same_reply_hint({**reply, "stopped": True}, dict(reply), greedy)
    assert not same_reply_hint(None, dict(reply), greedy)


def test_a_fixed_seed_says_so_and_random_sampling_says_nothing(tiny):
    seeded, free = run_all(regenerated(make_app(tiny, temperature=1.0, seed=7)),
                           regenerated(make_app(tiny, temperature=1.0)))
    assert any("seed is fixed (7)" in n for n in seeded)
    assert not any("Same reply" in n for n in free)
