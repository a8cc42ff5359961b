"""Replies as a daily tool (issue 15 item 4): stats under every reply on demand, a long prompt's progress, copying
a reply or its code, exporting the chat, the hint when a greedy regenerate repeats itself."""

import threading

import pytest

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


@pytest.mark.parametrize("stats", [[], "fast", {"prompt_tokens": "1"}, {**dict.fromkeys(STATS_KEYS, 1), "ttft": None},
                                   {**dict.fromkeys(STATS_KEYS, 1.0), "prompt_tps": float("nan")}])
def test_stats_not_as_we_write_them_show_nothing(tiny, stats):
    from app.chat_store import Chat

    chat = Chat(model="tiny", messages=[{"role": "user", "content": "hi"},
                                        {"role": "assistant", "content": "hello", "stats": stats}])
    app = make_app(tiny, chat=chat)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert shown_stats(app) == [""]
    run(scenario())


def test_stats_of_replies_out_of_the_context_dim_with_them(tiny):
    app = make_app(tiny, limit=96, max_tokens=16)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("ctrl+s")
            for i in range(6):
                await send(pilot, f"question {i}")
            start = app.session.chat.context_start
            dimmed = [w.index for w in app.query(ReplyStats) if w.has_class("dropped")]
            assert start > 0 and dimmed == [i for i in range(1, start, 2)]
            assert len(shown_stats(app)) == 6
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
            await until(pilot, lambda: app._reply is not None and app._reply.placeholder != "…")  # past WAITING
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


CODE_REPLY = "Two ways:\n\n```python\nprint('a')\n```\n\nor\n\n```sh\necho b\necho c\n```\n"


def messages_notified(app) -> list:
    return [n.message for n in app._notifications]


def test_copy_the_last_reply_and_its_code_blocks(tiny):
    from app.tui_reply_screens import CodeBlockScreen
    from tests.app.pilot import ScriptedModel

    app = make_app(tiny, limit=512, max_tokens=80, model=ScriptedModel(tiny, CODE_REPLY))

    async def scenario():
        async with app.run_test(size=(60, 20)) as pilot:
            await pilot.press("f2")
            assert app.clipboard == "" and "No reply to copy yet." in messages_notified(app)
            await send(pilot, "show me")
            await pilot.press("f2")
            assert app.clipboard == app.session.messages[-1]["content"] and app.clipboard.strip() == CODE_REPLY.strip()
            await pilot.press("f3")  # two blocks: a chooser, the last one first
            await pilot.pause()
            assert isinstance(app.screen, CodeBlockScreen)
            await pilot.press("enter")
            await pilot.pause()
            assert app.clipboard == "echo b\necho c\n" and not isinstance(app.screen, CodeBlockScreen)
            await palette(pilot, "Copy code block")
            await pilot.press("up", "enter")
            await pilot.pause()
            assert app.clipboard == "print('a')\n"
            await pilot.press("f3", "escape")  # closed: nothing copied
            await pilot.pause()
            assert app.clipboard == "print('a')\n"
            await palette(pilot, "Copy reply")
            assert app.clipboard == app.session.messages[-1]["content"]
    run(scenario())


def test_one_code_block_is_copied_at_once_and_none_says_so(tiny):
    from tests.app.pilot import ScriptedModel

    model = ScriptedModel(tiny, "Run:\n\n```\nls -l\n```")
    app = make_app(tiny, limit=512, max_tokens=40, model=model)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "how?")
            await pilot.press("f3")
            assert app.clipboard == "ls -l\n" and len(app.screen_stack) == 1
            model.script = tiny[1].encode("No code.", add_special_tokens=False) + model.script[-1:]
            await send(pilot, "and?")
            await pilot.press("f3")
            assert "The last reply has no code block." in messages_notified(app)
    run(scenario())


@pytest.fixture
def out(tmp_path, monkeypatch):
    """The current folder for an export: empty (the data folder is beside it)."""
    folder = tmp_path / "out"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_export_writes_markdown_and_asks_before_replacing(tiny, out):
    from app.tui_reply_screens import ExportScreen

    tmp_path = out

    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=(60, 20)) as pilot:
            await pilot.press("f4")
            assert "Nothing to export yet; send a message first." in messages_notified(app)
            await send(pilot, "what is this")
            app.session.messages[-1]["reasoning_content"] = "first a thought"
            await pilot.press("f4")
            await pilot.pause()
            assert isinstance(app.screen, ExportScreen)
            await pilot.press("ctrl+s", "f2")  # the chat's keys do nothing while a dialog is open
            assert shown_stats(app) == [] and app.clipboard == ""
            await pilot.press("enter")
            await pilot.pause()
            path = tmp_path / "what-is-this.md"
            text = path.read_text()
            assert text.startswith("# what is this\n") and "## You\n\nwhat is this\n" in text
            assert "<details>\n<summary>Thinking</summary>\n\n> first a thought\n" in text
            assert app.session.messages[-1]["content"].strip() in text
            assert f"Exported to {path.name}." in messages_notified(app)
            path.write_text("mine")
            await pilot.press("f4")
            await pilot.pause()
            await pilot.press("enter")  # it exists: refused, and said so
            await pilot.pause()
            error = str(app.screen.query_one("#error").render())
            assert "already exists" in error and path.read_text() == "mine"
            assert app.screen.query_one("#export").region.bottom <= 20  # reachable on a small screen
            await pilot.press("enter")  # confirmed
            await pilot.pause()
            assert path.read_text() == text and not isinstance(app.screen, ExportScreen)
            assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    run(scenario())


def test_export_to_a_missing_folder_or_a_full_disk_is_one_line(tiny, out, monkeypatch):
    import errno
    import os

    from textual.widgets import Input

    from app import chat_export

    tmp_path = out

    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "hi")
            await palette(pilot, "Export to Markdown")
            field = app.screen.query_one(Input)
            field.value = str(tmp_path / "nowhere" / "x.md")
            await pilot.press("enter")
            await pilot.pause()
            assert str(app.screen.query_one("#error").render()).startswith(f"{tmp_path / 'nowhere'}: no such folder")

            def full(*args):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            with monkeypatch.context() as disk:
                disk.setattr(chat_export.os, "replace", full)
                field.value = str(tmp_path)  # a folder: the default name inside it
                await pilot.press("enter")
                await pilot.pause()
            error = str(app.screen.query_one("#error").render())
            assert error == f"Could not write {tmp_path / 'hi.md'}: {os.strerror(errno.ENOSPC)}"
            assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporary file
            await pilot.press("enter")
            await pilot.pause()
            assert (tmp_path / "hi.md").is_file() and len(app.screen_stack) == 1
    run(scenario())
