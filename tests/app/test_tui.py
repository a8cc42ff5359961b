"""The chat app driven headless with real key presses against a tiny model."""

import re

from app.chat_store import Chat, ChatStore
from app.tui_screens import ChatListScreen, SettingsScreen
from app.tui_widgets import AssistantMessage, ChatInput, Notice, StatusBar, UserMessage
from tests.app.pilot import SIZE, SlowModel, make_app, run, send, type_text, until


def texts(app, kind):
    return [w for w in app.query(kind)]


async def streaming(pilot):
    """Ask for a long reply and return once it streams (tokens on screen; use a SlowModel and many max_tokens)."""
    await type_text(pilot, "Tell me a long story")
    await pilot.press("enter")
    await until(pilot, lambda: pilot.app._tokens >= 3)


def test_send_streams_a_markdown_reply_and_saves(tiny):
    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "Hello there, model?")
            users, replies = texts(app, UserMessage), texts(app, AssistantMessage)
            assert [str(u.render()) for u in users] == ["Hello there, model?"]
            assert len(replies) == 1 and replies[0].source == app.session.messages[1]["content"] != ""
            status = str(app.query_one(StatusBar).render())
            assert "tiny" in status and f"ctx {app.session.context_used}/256" in status and "tok/s" in status
            assert app.query_one(ChatInput).text == ""
            saved = ChatStore().load(app.session.chat.id)
            assert saved.messages == app.session.messages
            # the second message reuses the cache: only its own tokens are processed
            held = app.session.context_used
            await send(pilot, "More")
            assert app.session.context_used > held and app.session.cache[0].offset == app.session.context_used
    run(scenario())


def test_multiline_input(tiny):
    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "line one\nline two")
            assert app.session.messages[0]["content"] == "line one\nline two"
    run(scenario())


def test_escape_stops_and_keeps_partial_reply(tiny):
    app = make_app(tiny, max_tokens=200, model=SlowModel(tiny[0], 0.03))

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await streaming(pilot)
            assert app.generating and texts(app, AssistantMessage)  # streaming: the reply is on screen already
            await pilot.press("escape")
            await until(pilot, lambda: app.turns == 1 and not app.generating)
            await pilot.pause()
            reply = app.session.messages[-1]
            assert reply["role"] == "assistant" and reply.get("stopped") and reply["content"]
            widget = texts(app, AssistantMessage)[-1]
            assert widget.has_class("stopped") and widget.source == reply["content"]
            assert app.session.cache[0].offset == app.session.context_used < 200
            assert ChatStore().load(app.session.chat.id).messages[-1]["stopped"] is True
    run(scenario())


def test_regenerate_replaces_the_last_reply(tiny):
    app = make_app(tiny, temperature=1.0)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "Hello")
            first = app.session.messages[-1]["content"]
            await pilot.press("ctrl+r")
            await until(pilot, lambda: app.turns == 2 and not app.generating)
            await pilot.pause()
            assert len(app.session.messages) == 2 and len(texts(app, AssistantMessage)) == 1
            assert app.session.messages[-1]["content"] != first  # sampled again (no seed)
            assert texts(app, AssistantMessage)[0].source == app.session.messages[-1]["content"]
    run(scenario())


def test_edit_and_resend(tiny):
    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "first question")
            await send(pilot, "second question")
            await pilot.press("up")  # in the empty input: the last message
            assert app.query_one(ChatInput).text == "second question" and app.editing == 2
            await pilot.press("ctrl+e")  # the one before
            assert app.query_one(ChatInput).text == "first question" and app.editing == 0
            assert texts(app, UserMessage)[0].has_class("editing")
            await pilot.press(*["backspace"] * len("question"))
            await type_text(pilot, "try")
            await pilot.press("enter")
            await until(pilot, lambda: app.turns == 3 and not app.generating)
            await pilot.pause()
            assert [m["content"] for m in app.session.messages if m["role"] == "user"] == ["first try"]
            assert len(app.session.messages) == 2 and app.editing is None
            assert [str(u.render()) for u in texts(app, UserMessage)] == ["first try"]
            # Esc cancels an edit
            await pilot.press("ctrl+e")
            await pilot.press("escape")
            assert app.editing is None and app.query_one(ChatInput).text == ""
    run(scenario())


def test_new_chat_and_reopen_saved_chat(tiny):
    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "remember me")
            old_id, old_messages = app.session.chat.id, list(app.session.messages)
            await pilot.press("ctrl+n")
            await pilot.pause()
            assert app.session.messages == [] and not texts(app, UserMessage)
            assert app.session.chat.id != old_id
            await send(pilot, "a newer chat")
            await pilot.press("ctrl+o")
            await pilot.pause()
            assert isinstance(app.screen, ChatListScreen)
            assert [c.id for c in app.screen.chats][1] == old_id  # newest first
            await pilot.press("down", "enter")
            await pilot.pause()
            assert not isinstance(app.screen, ChatListScreen)
            assert app.session.chat.id == old_id and app.session.messages == old_messages
            assert [str(u.render()) for u in texts(app, UserMessage)] == ["remember me"]
            await send(pilot, "still there?")  # carries on in the reopened chat
            assert len(ChatStore().load(old_id).messages) == 4
    run(scenario())


def test_chat_list_delete_and_damaged_files(tiny, data_dir):
    store = ChatStore()
    store.save(Chat(messages=[{"role": "user", "content": "to delete"}]))
    (store.folder / "20240101-000000-aaaaaa.json").write_text('{"version": 1, "id": "2024')
    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("ctrl+o")
            await pilot.pause()
            screen = app.screen
            assert len(screen.chats) == 1 and "Skipped 1 damaged" in str(screen.query_one("#note").render())
            await pilot.press("delete")
            await pilot.pause()
            assert screen.chats == [] and store.list()[0] == []
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, ChatListScreen)
    run(scenario())


def test_context_overflow_shows_a_notice(tiny):
    app = make_app(tiny, limit=96, max_tokens=16)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            for i in range(7):
                await send(pilot, f"question {i}")
            notices = [str(n.render()) for n in texts(app, Notice) if n.has_class("warning")]
            assert notices and "Context full (96 tokens)" in notices[0]
            start = app.session.chat.context_start
            assert start > 0
            # each notice counts every message already out of the context, not only those its turn dropped
            counts = [int(re.search(r"the oldest (\d+) message", n).group(1)) for n in notices]
            assert len(counts) >= 2 and counts == sorted(counts) and counts[0] < counts[-1] == start
            dimmed = [w.index for w in app.query(".message") if w.has_class("dropped")]
            assert dimmed == list(range(start))
            assert app.session.context_used <= 96
    run(scenario())


def test_errors_are_shown_and_the_app_keeps_running(tiny):
    app = make_app(tiny, limit=40, max_tokens=8)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "x" * 24)  # with the template, more than the context holds
            errors = [str(n.render()) for n in texts(app, Notice) if n.has_class("error")]
            assert len(errors) == 1 and "context holds 40" in errors[0]
            assert app.is_running and not texts(app, AssistantMessage)
            await send(pilot, "short")  # replaces the unanswered message and works
            assert [m["content"] for m in app.session.messages if m["role"] == "user"] == ["short"]
            assert len(texts(app, AssistantMessage)) == 1
    run(scenario())


def test_settings_system_prompt_and_template_error(tiny, strict_folder):
    import mlxmodels

    strict = mlxmodels.load(strict_folder)
    app = make_app(strict)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("ctrl+t")
            await pilot.pause()
            assert isinstance(app.screen, SettingsScreen)
            await type_text(pilot, "Be brief.")
            await pilot.press("tab", "end")  # to the temperature field
            await pilot.press("backspace", "backspace", "backspace")
            await type_text(pilot, "0.5")
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert not isinstance(app.screen, SettingsScreen)
            assert app.session.chat.system == "Be brief." and app.session.sampling.temperature == 0.5
            await send(pilot, "hi")
            errors = [str(n.render()) for n in texts(app, Notice) if n.has_class("error")]
            assert errors and "System role not supported" in errors[-1]
            # clear the system prompt: the same message now gets a reply
            await pilot.press("ctrl+t")
            await pilot.pause()
            app.screen.query_one("#system").clear()
            await pilot.press("ctrl+s")
            await pilot.pause()
            await pilot.press("ctrl+r")
            await until(pilot, lambda: app.turns == 2 and not app.generating)
            assert app.session.messages[-1]["role"] == "assistant"
    run(scenario())


def test_settings_reject_bad_values(tiny):
    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("ctrl+t")
            await pilot.pause()
            screen = app.screen
            screen.query_one("#top_p").value = "0"
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert app.screen is screen and "top_p" in str(screen.query_one("#error").render())
            await pilot.press("escape")
            await pilot.pause()
            assert app.session.sampling.top_p == 1.0
    run(scenario())


def test_a_chat_changed_in_another_window_is_kept_and_yours_saved_apart(tiny):
    store = ChatStore()
    chat = Chat(model="tiny", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    store.save(chat)
    app = make_app(tiny, chat=store.load(chat.id))

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            other = ChatStore().load(chat.id)  # another window adds a turn and saves first
            other.messages += [{"role": "user", "content": "from the other window"},
                               {"role": "assistant", "content": "ok"}]
            ChatStore().save(other)
            await send(pilot, "from this window")
            forked = [n for n in texts(app, Notice) if "another window" in str(n.render())]
            assert len(forked) == 1 and forked[0].has_class("warning")
            assert app.session.chat.id in str(forked[0].render())
            assert app.session.chat.id != chat.id
            assert ChatStore().load(chat.id).messages[2]["content"] == "from the other window"
            assert ChatStore().load(app.session.chat.id).messages[2]["content"] == "from this window"
            await send(pilot, "and again")  # later saves go to this window's own chat, quietly
            assert len([n for n in texts(app, Notice) if "another window" in str(n.render())]) == 1
            assert len(ChatStore().list()[0]) == 2
    run(scenario())


def test_ctrl_c_copies_a_selection_else_stops_a_reply_and_twice_quits(tiny):
    app = make_app(tiny, max_tokens=200, model=SlowModel(tiny[0], 0.03))

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await type_text(pilot, "copy me")
            chat_input = app.query_one(ChatInput)
            chat_input.select_all()
            await pilot.press("ctrl+c")  # a selection: copied, as in any input; nothing else
            assert app.clipboard == "copy me" and app._interrupted == 0.0
            chat_input.clear()
            await streaming(pilot)
            await pilot.press("ctrl+c")  # stops the reply, keeps it, and arms the second press
            await until(pilot, lambda: app.turns == 1 and not app.generating)
            assert app.session.messages[-1].get("stopped") and not app._leaving
            await app.run_action("interrupt")  # the second press: the app leaves, the stopped reply saved
            assert app._leaving and app.return_code == 0
            assert ChatStore().load(app.session.chat.id).messages[-1]["stopped"] is True
    run(scenario())
