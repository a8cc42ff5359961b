"""Switching the model inside the chat (issue 15 item 4): F5 or the palette, a known model or a typed one, loaded in
the MLX thread with a visible loading state; the session, context limit, status bar and the chat's `model` follow;
a failed load is one notice and the old model stays."""

import threading
import weakref

import pytest

import mlxmodels
from app import tui_model_picker
from app.chat_store import ChatStore
from app.tui import ChatApp
from app.tui_model_picker import Loaded, ModelPickerScreen
from app.tui_widgets import StatusBar
from tests.app.pilot import SIZE, FixedMeter, make_app, run, send, type_text, until
from tests.app.test_tui_daily import palette


def status(app) -> str:
    return str(app.query_one(StatusBar).render())


@pytest.mark.parametrize("size", [SIZE, (60, 20)])
def test_f5_loads_a_typed_model_and_the_chat_follows(tiny, tiny_folder, size):
    from app.model_arg import context_length

    app = make_app(tiny, limit=200)

    async def scenario():
        async with app.run_test(size=size) as pilot:
            await send(pilot, "hello")
            old_model = app.session.model
            await pilot.press("f5")
            await pilot.pause()
            assert isinstance(app.screen, ModelPickerScreen)
            await pilot.press("tab")  # from the known models (if any) to the field
            app.screen.query_one("#model").value = str(tiny_folder)
            app.screen.query_one("#model").focus()
            await pilot.press("enter")
            await until(pilot, lambda: app.model_name == str(tiny_folder) and not app.generating)
            await pilot.pause()
            assert app.session.model is not old_model and app.session.cache is None
            limit = context_length(tiny_folder)
            assert app.session.chat.model == str(tiny_folder) and app.session.context_limit == limit != 200
            assert f"{tiny_folder.name} │" in status(app) and f"/{limit} │" in status(app)  # the bar follows
            await send(pilot, "and now?")  # the new model answers
            assert app.session.messages[-1]["role"] == "assistant" and app.session.cache is not None
    run(scenario())


def test_the_loading_state_is_visible_and_sending_waits(tiny, monkeypatch):
    release = threading.Event()

    def slow_loader(name):
        release.wait(10)
        return Loaded(tiny[0], tiny[1], name, 128)

    app = make_app(tiny)
    app.model_loader = slow_loader
    monkeypatch.setattr(tui_model_picker, "known_models", lambda: ["org/known-model", "/models/other"])

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await palette(pilot, "Switch model")
            assert isinstance(app.screen, ModelPickerScreen)
            options = app.screen.query_one("#models")
            assert [str(options.get_option_at_index(i).prompt) for i in range(2)] == ["org/known-model",
                                                                                   "/models/other"]
            await pilot.press("enter")  # the first known one
            await pilot.pause()
            assert app.generating and "loading org/known-model" in status(app)
            await type_text(pilot, "hi")
            await pilot.press("enter")
            await pilot.pause()
            assert app.session.messages == []  # it waited for the model, and said so
            assert any(n.message == "org/known-model is still loading; wait for it." for n in app._notifications)
            release.set()
            await until(pilot, lambda: not app.generating)
            await pilot.pause()
            assert app.model_name == "org/known-model" and app.session.context_limit == 128
            assert status(app).startswith("org/known-model")
    run(scenario())


def test_a_failed_load_is_one_notice_and_the_old_model_stays(tiny, monkeypatch):
    app = make_app(tiny)
    monkeypatch.setattr(tui_model_picker, "known_models", lambda: [])

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            before = app.session.model
            await pilot.press("f5")
            await pilot.pause()
            await type_text(pilot, "/no/such/model")  # no known models: the field has the focus
            await pilot.press("enter")
            await until(pilot, lambda: not app.generating and len(app._notifications) >= 2)
            await pilot.pause()
            errors = [n.message for n in app._notifications if n.severity == "error"]
            assert len(errors) == 1 and errors[0].startswith("Could not load /no/such/model: ")
            assert errors[0].endswith("; tiny stays.") and "\n" not in errors[0]
            assert app.session.model is before and app.model_name == "tiny" and app.session.chat.model == "tiny"
            await send(pilot, "still here?")
            assert app.session.messages[-1]["role"] == "assistant"
    run(scenario())


def test_esc_closes_the_picker(tiny, monkeypatch):
    app = make_app(tiny)
    monkeypatch.setattr(tui_model_picker, "known_models", lambda: ["a"])

    async def scenario():
        async with app.run_test(size=(60, 20)) as pilot:
            await pilot.press("f5")
            await pilot.pause()
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, ModelPickerScreen) and app.model_name == "tiny"
    run(scenario())


def test_the_old_model_is_released(tiny, tiny_folder):
    model, tokenizer = mlxmodels.load(tiny_folder)  # a model only the app holds
    app = ChatApp(model, tokenizer, "first", 256, ChatStore(), meter=FixedMeter())
    gone = weakref.ref(model)
    del model
    app.model_loader = lambda name: Loaded(tiny[0], tiny[1], name, 256)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "hello")  # the first model has run: its cache is held too
            await app.switch_model("second")
            await until(pilot, lambda: not app.generating)
            await pilot.pause()
            assert app.model_name == "second" and gone() is None
    run(scenario())


def test_a_switched_model_keeps_the_chats_dtype_and_context(tiny_folder):
    """mlxm chat's --dtype and --context apply to the models switched to; a --context above the new model's maximum
    gives its maximum (the limit was asked of another model)."""
    from app.model_arg import context_length
    from app.bench import float_dtype

    small = tui_model_picker.load_model(str(tiny_folder), "float16", 50)
    assert small.context_limit == 50 and float_dtype(small.model) == "float16"
    full = tui_model_picker.load_model(str(tiny_folder), None, 10**9)
    assert full.context_limit == context_length(tiny_folder)
