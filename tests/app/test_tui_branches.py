"""Branches (issue 15 item 4): editing an earlier message keeps the turns it replaces as a branch of the chat, saved
with it and validated on load; Ctrl+B (or the palette) lists them and switches, and the cache makes a switch cheap:
the next turn re-feeds only what follows the fork."""

import json

import pytest

from app import chat_branches
from app.chat_session import common_prefix
from app.chat_store import MAX_BRANCHES, Chat, ChatFileError, ChatStore
from app.tui_branches import BranchScreen
from app.tui_widgets import UserMessage
from tests.app.pilot import SIZE, make_app, run, send, type_text, until
from tests.app.test_chat_session import session, turn
from tests.app.test_tui_daily import palette


def contents(messages) -> list:
    return [m["content"] for m in messages]


def test_an_edit_keeps_the_replaced_turns_and_a_switch_swaps_them(tiny):
    s = session(tiny)
    turn(s, "first question")
    turn(s, "second question")
    before = [dict(m) for m in s.messages]
    s.edit(2, "second try")
    assert contents(s.messages) == ["first question", before[1]["content"], "second try"]
    assert s.chat.branches == [{"messages": before, "context_start": 0}]
    [b] = chat_branches.listing(s.chat)
    assert (b.fork, b.first_line, b.messages) == (2, "second question", 4)
    turn(s)
    edited = [dict(m) for m in s.messages]
    assert chat_branches.switch(s.chat, 0) == 2
    assert s.messages == before and s.chat.branches == [{"messages": edited, "context_start": 0}]


def test_an_edit_that_loses_no_reply_keeps_no_branch(tiny):
    s = session(tiny)
    s.add_user("unanswered")
    s.edit(0, "answered, this time")
    assert s.chat.branches == []


def test_switching_back_re_prefills_only_what_follows_the_fork(tiny):
    s = session(tiny, limit=512, max_tokens=8)
    turn(s, "first question")
    turn(s, "second question")
    s.edit(2, "another second question")
    turn(s)
    held = list(s.cache_tokens)  # the edited version, as the cache holds it
    chat_branches.switch(s.chat, 0)  # back to the first version; a new message on it
    s.add_user("third question")
    text = s.render()
    fork = len(s.tokenizer.encode(text[:text.index("second question")], add_special_tokens=False))
    prompt = s.encode()
    t = s.prepare()
    assert t.reused == common_prefix(held, prompt) and fork - 1 <= t.reused < fork + 8  # the shared turns only
    assert t.feed == prompt[t.reused:] and len(t.feed) < len(prompt) - fork + 2


def test_branches_are_bounded_oldest_first(tiny):
    s = session(tiny, max_tokens=2)
    turn(s, "q")
    for i in range(MAX_BRANCHES + 3):
        s.edit(0, f"q{i}")
        turn(s)
    assert len(s.chat.branches) == MAX_BRANCHES
    assert s.chat.branches[0]["messages"][0]["content"] == "q2"  # q, q0 and q1 went first


def test_branches_survive_saving_and_damaged_ones_refuse_the_file(tiny):
    store = ChatStore()
    c = Chat(messages=[{"role": "user", "content": "b"}, {"role": "assistant", "content": "2"}],
             branches=[{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "1"}],
                        "context_start": 0}])
    store.save(c)
    assert store.load(c.id).branches == c.branches
    good = c.branches[0]
    for bad in ["x", [1], [{**good, "context_start": 3}], [{**good, "context_start": -1}],
                [{**good, "context_start": True}], [{**good, "extra": 1}], [{"messages": [{"role": "system"}],
                                                                           "context_start": 0}],
                [good] * (MAX_BRANCHES + 1)]:
        data = {**c.to_json(), "branches": bad}
        (store.folder / f"{c.id}.json").write_text(json.dumps(data))
        with pytest.raises(ChatFileError, match="malformed branches"):
            store.load(c.id)


@pytest.mark.parametrize("size", [SIZE, (60, 20)])
def test_ctrl_b_lists_the_branches_and_switches(tiny, size):
    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=size) as pilot:
            await pilot.press("ctrl+b")
            await pilot.pause()
            assert not isinstance(app.screen, BranchScreen)  # none yet: a notice says how to make one
            assert "no branches" in list(app._notifications)[-1].message
            await send(pilot, "first question")
            await send(pilot, "second question")
            await pilot.press("ctrl+e")
            await pilot.press(*["backspace"] * len("question"))
            await type_text(pilot, "try")
            await pilot.press("enter")
            await until(pilot, lambda: app.turns == 3 and not app.generating)
            await pilot.pause()
            await pilot.press("ctrl+b")
            await pilot.pause()
            assert isinstance(app.screen, BranchScreen)
            options = app.screen.query_one("#branches")
            assert str(options.get_option_at_index(0).prompt) == ("second question  ·  forks after message 2  ·  "
                                                                  "4 messages")
            assert options.region.width <= size[0]
            await pilot.press("enter")
            await pilot.pause()
            assert not isinstance(app.screen, BranchScreen)
            assert [str(u.render()) for u in app.query(UserMessage)] == ["first question", "second question"]
            saved = ChatStore().load(app.session.chat.id)
            assert contents(saved.messages)[2] == "second question"
            assert contents(saved.branches[0]["messages"])[2] == "second try"
            await palette(pilot, "Branches")  # and back, from the palette
            await pilot.press("enter")
            await pilot.pause()
            assert contents(app.session.messages)[2] == "second try"
    run(scenario())


def test_esc_closes_the_branch_list_without_switching(tiny):
    chat = Chat(model="tiny", messages=[{"role": "user", "content": "b"}, {"role": "assistant", "content": "2"}],
                branches=[{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "1"}],
                           "context_start": 0}])
    app = make_app(tiny, chat=chat)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("ctrl+b")
            await pilot.pause()
            assert str(app.screen.query_one("#branches").get_option_at_index(0).prompt).startswith(
                "a  ·  forks from the start")
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, BranchScreen) and contents(app.session.messages) == ["b", "2"]
    run(scenario())
