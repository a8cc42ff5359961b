"""Thinking models in the app: the session splits and saves reasoning and passes it back to the template, the chat
streams it in a collapsible section (the reply box never empty meanwhile), the settings switch thinking on and off,
saved chats keep it, and `mlxm generate` sends it to stderr (or hides it)."""

import json

import pytest

from app import cli, model_arg
from app.chat_session import ChatSession
from app.chat_store import TEMPLATE_KWARGS, Chat, ChatFileError, ChatStore, Sampling
from app.tui_screens import SettingsScreen
from app.tui_widgets import NO_ANSWER, THINKING, AssistantMessage, ThinkingSection
from tests.app.pilot import SIZE, ScriptedModel, make_app, run, send, type_text, until
from tests.app.test_cli import mlxm
from tests.app.tiny import INSIDE_TEMPLATE, build_tiny

REPLY = "<think>\nLet me see.\n2 + 2 = 4\n</think>\n\nFour."
REASONING, ANSWER = "Let me see.\n2 + 2 = 4", "Four."
REASONING_TOKENS = len("<think>\nLet me see.\n2 + 2 = 4\n</think>")


def session(thinker, text=REPLY, **settings):
    return ChatSession(ScriptedModel(thinker, text), thinker[1], 256,
                       Chat(settings={**Sampling(max_tokens=80).to_dict(), **settings}))


def turn(s, text):
    s.add_user(text)
    return list(s.reply(s.prepare()))


# ---------------------------------------------------------------- the session


def test_the_reply_is_saved_as_answer_and_reasoning_and_the_reasoning_goes_back_to_the_template(thinker):
    s = session(thinker)
    responses = turn(s, "2+2?")
    assert "".join(r.text for r in responses) == REPLY  # the raw stream is unchanged
    assert "".join(r.reasoning for r in responses) == REASONING and "".join(r.answer for r in responses) == ANSWER
    assert s.messages[-1].pop("stats")["generation_tokens"] == len(responses)  # what it cost (app.reply_stats)
    assert s.messages[-1] == {"role": "assistant", "content": ANSWER, "reasoning_content": REASONING,
                              "reasoning_tokens": REASONING_TOKENS}
    s.add_user("and 3+3?")
    assert f"<|assistant|><think>{REASONING}</think>{ANSWER}</s><|user|>and 3+3?" in s.render()
    held = s.context_used
    s.messages.pop()
    turn(s, "and 3+3?")
    assert 0 < len(s.messages) and s.cache[0].offset == s.context_used > held


def test_thinking_switch_reaches_the_template_and_survives_sampling_changes(thinker):
    s = session(thinker)
    s.add_user("hi")
    assert s.thinking is None and s.render().endswith("<|assistant|>")
    s.set_thinking(False)
    assert s.render().endswith("<|assistant|><think>\n\n</think>\n\n")
    s.set_sampling(Sampling(temperature=0.5))
    assert s.thinking is False and s.chat.settings[TEMPLATE_KWARGS] == {"enable_thinking": False}
    s.set_template_kwargs({"enable_thinking": True, "reasoning_effort": "high"})
    assert s.render().endswith("<|assistant|>") and s.template_kwargs["reasoning_effort"] == "high"
    s.set_thinking(None)
    assert s.template_kwargs == {"reasoning_effort": "high"}
    with pytest.raises(ValueError, match="enable_thinking"):
        s.set_template_kwargs({"enable_thinking": "yes"})


def test_a_prompt_ending_inside_the_reasoning_makes_the_whole_reply_reasoning(tiny, tmp_path):
    from mlxmodels.tokenizer import load_tokenizer
    from tests.app.tiny import save_ascii_tokenizer

    save_ascii_tokenizer(tmp_path, INSIDE_TEMPLATE)
    r1 = (tiny[0], load_tokenizer(tmp_path))
    s = ChatSession(ScriptedModel(r1, "Hmm, 4.</think>Four."), r1[1], 256, Chat(settings=Sampling(max_tokens=40).to_dict()))
    s.add_user("2+2?")
    t = s.prepare()
    assert t.inside
    list(s.reply(t))
    assert s.messages[-1]["content"] == "Four." and s.messages[-1]["reasoning_content"] == "Hmm, 4."


def test_a_plain_reply_has_no_reasoning_fields(tiny):
    s = ChatSession(ScriptedModel(tiny, "Just text."), tiny[1], 256, Chat(settings=Sampling(max_tokens=40).to_dict()))
    turn(s, "hi")
    assert set(s.messages[-1]) == {"role", "content", "stats"} and s.messages[-1]["content"] == "Just text."


# ---------------------------------------------------------------- saved chats


def test_saved_chats_keep_reasoning_and_old_files_still_open(data_dir):
    store = ChatStore()
    chat = Chat(settings={TEMPLATE_KWARGS: {"enable_thinking": False}}, messages=[
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": ANSWER, "reasoning_content": REASONING, "reasoning_tokens": 9}])
    store.save(chat)
    loaded = store.load(chat.id)
    assert loaded.messages == chat.messages and loaded.settings == chat.settings
    old = {"version": 1, "id": "old-chat", "messages": [{"role": "user", "content": "a"},
                                                          {"role": "assistant", "content": "b"}]}
    (store.folder / "old-chat.json").write_text(json.dumps(old))
    assert store.load("old-chat").messages == old["messages"]


@pytest.mark.parametrize("message, settings", [
    ({"role": "user", "content": "a", "reasoning_content": "x"}, {}),  # only replies reason
    ({"role": "assistant", "content": "a", "reasoning_content": 3}, {}),
    ({"role": "assistant", "content": "a", "reasoning_content": "x", "reasoning_tokens": -1}, {}),
    ({"role": "assistant", "content": "a", "reasoning_content": "x", "reasoning_tokens": True}, {}),
    ({"role": "assistant", "content": "a", "reasoning_content": "x", "reasoning_tokens": 1.5}, {}),
    ({"role": "assistant", "content": "a"}, {TEMPLATE_KWARGS: {"enable_thinking": "no"}}),
    ({"role": "assistant", "content": "a"}, {TEMPLATE_KWARGS: {"messages": []}}),
    ({"role": "assistant", "content": "a"}, {TEMPLATE_KWARGS: {"x": {"nested": 1}}}),
    ({"role": "assistant", "content": "a"}, {TEMPLATE_KWARGS: {"bad name": 1}}),
    ({"role": "assistant", "content": "a"}, {TEMPLATE_KWARGS: ["enable_thinking"]}),
])
def test_damaged_reasoning_or_switches_are_refused(data_dir, message, settings):
    store = ChatStore()
    store.folder.mkdir(parents=True)
    data = {"version": 1, "id": "bad", "settings": settings, "messages": [{"role": "user", "content": "q"}, message]}
    (store.folder / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ChatFileError, match="bad.json"):
        store.load("bad")


# ---------------------------------------------------------------- the chat


def thinking_app(thinker, text=REPLY, delay=0.03, **kw):
    return make_app(thinker, max_tokens=200, model=ScriptedModel(thinker, text, delay), **kw)


def test_reasoning_streams_dimmed_above_the_reply_then_collapses(thinker):
    app = thinking_app(thinker)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await type_text(pilot, "2+2?")
            await pilot.press("enter")
            seen = []  # (reply text, section open, section title) while the reply streams
            while app.turns == 0:
                replies, sections = list(app.query(AssistantMessage)), list(app.query(ThinkingSection))
                if replies:
                    section = sections[-1] if sections else None
                    seen.append((replies[-1].source or replies[-1].placeholder, section and section.collapsed,
                                 section.title if section else ""))
                await pilot.pause(0.01)
            await pilot.pause()
            assert seen and all(text for text, _, _ in seen), "the reply box sat empty while tokens streamed"
            assert any(text == THINKING and is_collapsed is False and title.startswith("Thinking… (")
                       for text, is_collapsed, title in seen)
            section, reply = app.query_one(ThinkingSection), app.query_one(AssistantMessage)
            assert section.collapsed and section.text == REASONING and reply.source == ANSWER
            assert section.title == f"Thinking ({REASONING_TOKENS} tokens)" and reply.placeholder is None
            assert str(section.body.render()) == REASONING
            assert list(app.log_view.children).index(section) + 1 == list(app.log_view.children).index(reply)
            assert ChatStore().load(app.session.chat.id).messages[-1]["reasoning_content"] == REASONING
            await pilot.click("ThinkingSection CollapsibleTitle")  # it expands again
            assert not section.collapsed
    run(scenario())


def test_a_reply_stopped_while_thinking_keeps_its_reasoning_and_says_it_has_no_answer(thinker):
    app = thinking_app(thinker, "<think>" + "hmm " * 60)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await type_text(pilot, "Why?")
            await pilot.press("enter")
            await until(pilot, lambda: app.query(ThinkingSection) and app._tokens > 12)
            await pilot.press("escape")
            await until(pilot, lambda: app.turns == 1)
            await pilot.pause()
            reply, section = app.query_one(AssistantMessage), app.query_one(ThinkingSection)
            assert reply.placeholder == NO_ANSWER and reply.has_class("stopped") and section.collapsed
            saved = ChatStore().load(app.session.chat.id).messages[-1]
            assert saved["content"] == "" and saved["reasoning_content"].startswith("hmm hmm") and saved["stopped"]
            await app.render_log()  # reopened: the same
            assert app.query_one(AssistantMessage).placeholder == NO_ANSWER
            assert app.query_one(ThinkingSection).text == saved["reasoning_content"]
    run(scenario())


def test_a_reopened_chat_shows_its_reasoning_collapsed(thinker):
    chat = Chat(model="tiny", settings=Sampling().to_dict(), messages=[
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": ANSWER, "reasoning_content": REASONING, "reasoning_tokens": 1},
        {"role": "user", "content": "thanks"}, {"role": "assistant", "content": "You're welcome."}])
    app = make_app(thinker, chat=chat)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            sections = list(app.query(ThinkingSection))
            assert len(sections) == 1 and sections[0].collapsed and sections[0].title == "Thinking (1 token)"
            assert [r.source for r in app.query(AssistantMessage)] == [ANSWER, "You're welcome."]
            await pilot.click("ThinkingSection CollapsibleTitle")
            assert not sections[0].collapsed and str(sections[0].body.render()) == REASONING
    run(scenario())


def test_settings_switch_thinking_off_and_on(thinker):
    app = thinking_app(thinker, "Four.", delay=0)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            from textual.widgets import Select

            await pilot.press("ctrl+t")
            screen = app.screen
            assert isinstance(screen, SettingsScreen) and screen.query_one("#thinking", Select).value == "default"
            screen.query_one("#thinking", Select).value = "off"
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert app.session.thinking is False
            await send(pilot, "2+2?")
            assert app.session.render().count("<think>\n\n</think>\n\n") == 1  # the new generation prompt
            assert ChatStore().load(app.session.chat.id).settings[TEMPLATE_KWARGS] == {"enable_thinking": False}
            await pilot.press("ctrl+t")
            assert app.screen.query_one("#thinking", Select).value == "off"
            app.screen.query_one("#thinking", Select).value = "on"
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert app.session.thinking is True and app.session.sampling.max_tokens == 200
    run(scenario())


# ---------------------------------------------------------------- mlxm generate and chat


@pytest.fixture
def scripted_load(thinker, monkeypatch, tiny_folder):
    """`mlxm generate` loads the thinker, made to reply REPLY."""
    model = ScriptedModel(thinker, REPLY)
    monkeypatch.setattr(model_arg, "load",
                        lambda name, dtype=None, adapter_path=None, parallel=None: (model, thinker[1], tiny_folder))


def test_generate_sends_reasoning_to_stderr_and_the_answer_to_stdout(scripted_load, capsys):
    assert cli.main(["generate", "-p", "2+2?", "--chat", "--max-tokens", "80", "-v"]) == 0
    out, err = capsys.readouterr()
    assert out == ANSWER
    assert err.startswith(REASONING + "\n") and f"reasoning: {REASONING_TOKENS} tokens" in err and "\x1b[" not in err
    assert cli.main(["generate", "-p", "2+2?", "--chat", "--max-tokens", "80", "--hide-thinking"]) == 0
    assert capsys.readouterr() == (ANSWER, "")


def test_generate_no_think_renders_the_closed_reasoning_block(scripted_load, capsys):
    prompts = {}
    for flag in ("--think", "--no-think"):
        assert cli.main(["generate", "-p", "hi", "--chat", flag, "--max-tokens", "80", "-v"]) == 0
        prompts[flag] = int(capsys.readouterr().err.split("prompt: ")[1].split()[0])
    assert prompts["--no-think"] - prompts["--think"] == len("<think>\n\n</think>\n\n")


def test_generate_template_switches_refused_with_raw(capsys):
    for flag in (["--no-think"], ["--template-kwargs", '{"a": 1}']):
        assert cli.main(["generate", "-p", "hi", "--raw", *flag]) == 1
        assert "which --raw leaves out" in capsys.readouterr().err


@pytest.mark.parametrize("value, needle", [("{", "not JSON"), ("[1]", "JSON object"), ('{"tools": 1}', "tools"),
                                           ('{"a": NaN}', "finite"), ("[" * 100000, "not JSON")])
def test_bad_template_kwargs_flag_is_one_line(value, needle, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "-p", "hi", "--chat", "--template-kwargs", value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and needle in err and "--template-kwargs" in err


def test_generate_from_a_prompt_ending_inside_the_reasoning_end_to_end(tmp_path):
    """A real process and folder (DeepSeek-R1-style template): the random model never closes its reasoning, so
    stdout stays empty and all of it goes to stderr, or nowhere with --hide-thinking."""
    folder = build_tiny(tmp_path / "r1", chat_template=INSIDE_TEMPLATE)
    r = mlxm("generate", "-m", folder, "-p", "hi", "--chat", "--max-tokens", "12")
    assert r.returncode == 0 and r.stdout == "" and len(r.stderr.strip()) > 0 and "Traceback" not in r.stderr
    r = mlxm("generate", "-m", folder, "-p", "hi", "--chat", "--max-tokens", "12", "--hide-thinking")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_chat_flags_set_a_new_chats_switches(monkeypatch, tiny_folder):
    import app.tui

    made = []

    class FakeApp:
        crash = None

        def __init__(self, *args, chat, **kwargs):
            made.append(chat)

        def run(self):
            pass

    monkeypatch.setattr(app.tui, "ChatApp", FakeApp)
    assert cli.main(["chat", "-m", str(tiny_folder), "--no-think", "--template-kwargs", '{"effort": "low"}']) == 0
    assert made[-1].settings[TEMPLATE_KWARGS] == {"effort": "low", "enable_thinking": False}
    assert cli.main(["chat", "-m", str(tiny_folder)]) == 0
    assert TEMPLATE_KWARGS not in made[-1].settings
