"""The chat's everyday rough edges (issue 15): drafts kept across edits, the status bar's context after switching
chats, Ctrl+C and Ctrl+D as in a shell, the chat's own actions in the command palette."""

import re

from app.chat_store import TEMPLATE_KWARGS, ChatStore
from app.tui_widgets import ChatInput, Notice, StatusBar
from tests.app.pilot import SIZE, make_app, run, send, type_text, until


def status(app) -> str:
    return str(app.query_one(StatusBar).render())


def test_a_draft_survives_editing_and_cancelling(tiny):
    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "first question")
            chat_input = app.query_one(ChatInput)
            await type_text(pilot, "half a thought")
            await pilot.press("ctrl+e")
            assert chat_input.text == "first question" and app.editing == 0
            await pilot.press("escape")  # cancelled: the draft is back
            assert app.editing is None and chat_input.text == "half a thought"
            await pilot.press("ctrl+e")
            await pilot.press(*["backspace"] * len("question"))
            await type_text(pilot, "try")
            before = app.turns
            await pilot.press("enter")  # resent: the draft is back too, and not sent
            await pilot.pause()
            assert chat_input.text == "half a thought"
            while app.turns == before or app.generating:
                await pilot.pause(0.02)
            assert [m["content"] for m in app.session.messages if m["role"] == "user"] == ["first try"]
    run(scenario())


def test_status_bar_shows_the_current_chats_context(tiny):
    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "a first chat with a few words in it")
            first_id, first_used = app.session.chat.id, app.session.context_used
            assert f"ctx {first_used}/256" in status(app) and first_used > 0
            await pilot.press("ctrl+n")
            await pilot.pause()
            assert "ctx 0/256" in status(app)
            await send(pilot, "hi")
            second_used = app.session.context_used
            assert 0 < second_used < first_used and f"ctx {second_used}/256" in status(app)
            await pilot.press("ctrl+o")
            await pilot.pause()
            options = app.screen.chats
            await pilot.press(*["down"] * [c.id for c in options].index(first_id), "enter")
            await pilot.pause()
            assert app.session.chat.id == first_id
            # the reopened chat's own conversation, not the cache of the chat before it
            used = int(re.search(r"ctx (\d+)/256", status(app)).group(1))
            assert used == len(app.session.encode()) >= first_used  # its prompt: all it held, and the turn markers
    run(scenario())


def test_status_bar_shows_the_context_of_a_chat_opened_at_start(tiny):
    store = ChatStore()
    seed = make_app(tiny)

    async def make_chat():
        async with seed.run_test(size=SIZE) as pilot:
            await send(pilot, "something to come back to")
    run(make_chat())
    app = make_app(tiny, chat=store.load(seed.session.chat.id))  # as `mlxm chat --open ID` does

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert app.session.context_used == len(app.session.encode()) > 0
            assert f"ctx {app.session.context_used}/256" in status(app)
    run(scenario())



def test_ctrl_c_when_idle_quits_and_saves(tiny):
    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "keep this")
            await type_text(pilot, "a draft")
            await pilot.press("ctrl+c")  # unsent text in the input: it asks for a second press
            assert not app._leaving and app._interrupted > 0
            app._interrupted = 0.0  # the second press comes late: a single press again
            app.query_one(ChatInput).clear()
            await pilot.press("ctrl+c")  # idle with an empty input: quits at once
            await pilot.pause()
            assert app._leaving and app.return_code == 0
            assert ChatStore().load(app.session.chat.id).messages == app.session.messages
    run(scenario())


def test_ctrl_d_deletes_right_and_in_an_empty_input_quits(tiny):
    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await type_text(pilot, "abc")
            await pilot.press("home", "ctrl+d")  # text in the input: it deletes, as before
            assert app.query_one(ChatInput).text == "bc" and not app._leaving
            await pilot.press("ctrl+d", "ctrl+d")
            assert app.query_one(ChatInput).text == "" and not app._leaving
            await pilot.press("ctrl+d")  # now empty: end of input, as in a shell
            await pilot.pause()
            assert app._leaving and app.return_code == 0
    run(scenario())


async def palette(pilot, command: str):
    """Open the command palette, type `command`, run the best match."""
    await pilot.press("ctrl+p")
    await pilot.pause()
    await type_text(pilot, command)
    await pilot.pause(0.3)  # the palette searches its providers in the background
    await pilot.press("enter")
    await pilot.pause()


def test_command_palette_offers_the_chats_actions(tiny):
    from textual.command import CommandPalette

    from app.tui_screens import ChatListScreen, SettingsScreen

    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "hello")
            await palette(pilot, "Toggle thinking")
            saved = ChatStore().load(app.session.chat.id).settings
            assert app.session.thinking is False and saved[TEMPLATE_KWARGS] == {"enable_thinking": False}
            await palette(pilot, "Toggle thinking")
            assert app.session.thinking is True
            await palette(pilot, "Edit last message")
            assert app.editing == 0 and app.query_one(ChatInput).text == "hello"
            await pilot.press("escape")
            await palette(pilot, "Regenerate")
            await until(pilot, lambda: app.turns == 2 and not app.generating)
            assert len(app.session.messages) == 2
            await palette(pilot, "Open a saved chat")
            assert isinstance(app.screen, ChatListScreen)
            await pilot.press("escape")
            await pilot.pause()
            await palette(pilot, "Settings")
            assert isinstance(app.screen, SettingsScreen)
            await pilot.press("escape")
            await pilot.pause()
            old = app.session.chat.id
            await palette(pilot, "New chat")
            assert app.session.chat.id != old and app.session.messages == []
            assert not isinstance(app.screen, CommandPalette)
    run(scenario())
