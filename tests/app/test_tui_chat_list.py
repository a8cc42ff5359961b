"""The saved-chats list (Ctrl+O) shows each chat's model, date and first line; opening a chat made with another
model than the loaded one warns, whether from the list or with `--open` (issue 15 item 4)."""

import time

import pytest

from app.chat_store import Chat, ChatStore
from app.tui import ChatApp
from tests.app.pilot import SIZE, FixedMeter, make_app, run, until


def saved(store: ChatStore, text: str, model: str, **kw) -> Chat:
    chat = Chat(model=model, messages=[{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}],
                **kw)
    store.save(chat)
    return chat


def warnings(app) -> list:
    return [n.message for n in app._notifications if n.severity == "warning"]


@pytest.mark.parametrize("size", [SIZE, (60, 20)])
def test_list_shows_model_date_and_first_line(tiny, size):
    store = ChatStore()
    other = saved(store, "Plan a trip to Kyoto\nin spring", "qwen3:8b", title="Trip")
    mine = saved(store, "Why is the sky blue?", "tiny")
    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=size) as pilot:
            await pilot.press("ctrl+o")
            await pilot.pause()
            options = app.screen.query_one("#chats")
            entries = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(store.load(mine.id).updated))
            assert entries[0].splitlines() == ["Why is the sky blue?", f"tiny  ·  {when}  ·  2 messages"]
            assert entries[1].splitlines()[0] == "Trip" and entries[1].splitlines()[1].startswith("qwen3:8b  ·  ")
            assert entries[1].splitlines()[2] == "Plan a trip to Kyoto"  # a title of its own: the first line too
            assert other.id in {options.get_option_at_index(i).id for i in range(options.option_count)}
            assert options.region.width <= size[0]
    run(scenario())


def test_opening_a_chat_made_with_another_model_warns(tiny):
    store = ChatStore()
    saved(store, "older chat", "qwen3:8b")
    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            assert warnings(app) == []
            await pilot.press("ctrl+o")
            await pilot.pause()
            await pilot.press("enter")
            await until(pilot, lambda: app.session.chat.model == "qwen3:8b")
            await pilot.pause()
            assert warnings(app) == ["This chat was made with qwen3:8b; tiny is loaded now and writes the next "
                                     "replies."]
    run(scenario())


def test_opening_a_chat_made_with_this_model_or_none_recorded_does_not_warn(tiny):
    store = ChatStore()
    saved(store, "made with no model recorded", "")
    saved(store, "made with tiny", "tiny")
    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            for keys in (["enter"], ["down", "enter"]):  # the newest first: made with tiny, then the other
                await pilot.press("ctrl+o")
                await pilot.pause()
                await pilot.press(*keys)
                await pilot.pause()
            assert app.session.chat.messages[0]["content"] == "made with no model recorded"
            assert warnings(app) == []
    run(scenario())


def test_open_flag_with_a_chat_of_another_model_warns(tiny):
    chat = saved(ChatStore(), "from the command line", "llama3.2:1b")
    app = ChatApp(tiny[0], tiny[1], "tiny", 256, ChatStore(), ChatStore().load(chat.id), meter=FixedMeter())

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert len(warnings(app)) == 1 and "made with llama3.2:1b; tiny is loaded" in warnings(app)[0]
    run(scenario())
