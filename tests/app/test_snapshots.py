"""SVG snapshots of the chat app's main screens (pytest-textual-snapshot). Deterministic: fixed terminal size, a
fixed memory meter, no reply generated in the snapshot itself, dates in UTC.
Update after an intended change: python -m pytest tests/app/test_snapshots.py --snapshot-update"""

import json
import time

import pytest

from app.chat_session import Sampling
from app.chat_store import Chat, ChatStore
from tests.app.pilot import SIZE, make_app

REPLY = """Here is a **short** answer:

1. Load the model
2. Stream the reply

```python
print("hello")
```"""


@pytest.fixture(autouse=True)
def plain_textual(monkeypatch):
    """The user's environment must not restyle the screenshots (NO_COLOR, TEXTUAL_THEME, TEXTUAL_FILTERS)."""
    import textual.constants

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(textual.constants, "FILTERS", "")


async def dark(pilot):
    pilot.app.theme = "textual-dark"  # TEXTUAL_THEME sets the class default at import
    await pilot.pause()


def shot(snap_compare, app, press=()):
    return snap_compare(app, terminal_size=SIZE, press=press, run_before=dark)


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def saved_chat(**kw) -> Chat:
    return Chat(id="20250101-120000-aaaaaa", model="tiny", system="Answer in markdown.",
                settings=Sampling(temperature=0.7, top_p=0.9, max_tokens=64).to_dict(), created=1735732800.0,
                updated=1735732800.0, messages=[
                    {"role": "user", "content": "An old question that no longer fits"},
                    {"role": "assistant", "content": "An old answer."},
                    {"role": "user", "content": "How do I use mlxm?"},
                    {"role": "assistant", "content": REPLY},
                    {"role": "user", "content": "And then?"},
                    {"role": "assistant", "content": "Then you", "stopped": True},
                ], context_start=2, **kw)


def test_empty_chat(snap_compare, tiny):
    assert shot(snap_compare, make_app(tiny))


def test_conversation(snap_compare, tiny):
    assert shot(snap_compare, make_app(tiny, chat=saved_chat()))


def test_editing_a_message(snap_compare, tiny):
    assert shot(snap_compare, make_app(tiny, chat=saved_chat()), press=["up"])


def test_settings(snap_compare, tiny):
    assert shot(snap_compare, make_app(tiny, chat=saved_chat()), press=["ctrl+t"])


def test_thinking_replies(snap_compare, tiny):
    """Reasoning above each reply, dimmed: the first expanded (Tab to its title, Enter), the second collapsed; a
    reply stopped while thinking says it has no answer."""
    chat = Chat(id="20250101-120000-cccccc", model="tiny", settings=Sampling().to_dict(), messages=[
        {"role": "user", "content": "What is 17 * 3?"},
        {"role": "assistant", "content": "17 × 3 = **51**.", "reasoning_content": "17 * 3 = 10 * 3 + 7 * 3 = 51.",
         "reasoning_tokens": 24},
        {"role": "user", "content": "And 51 / 3?"},
        {"role": "assistant", "content": "", "reasoning_content": "Back to 17.\nSo the answer is",
         "reasoning_tokens": 19, "stopped": True},
    ])
    assert shot(snap_compare, make_app(tiny, chat=chat), press=["tab", "tab", "enter"])


def test_saved_chats(snap_compare, tiny, utc, data_dir):
    store = ChatStore()
    store.folder.mkdir(parents=True)
    for i, title in enumerate(["Planning a trip", "Why is the sky blue?", "Rust lifetimes"]):
        chat = saved_chat()
        chat.id = f"20250101-12000{i}-aaaaaa"
        chat.messages[0]["content"] = title
        data = chat.to_json()
        data["updated"] = 1735732800.0 + 3600 * i
        (store.folder / f"{chat.id}.json").write_text(json.dumps(data))
    (store.folder / "20250101-130000-bbbbbb.json").write_text('{"version": 1, "messa')  # a damaged file
    assert shot(snap_compare, make_app(tiny), press=["ctrl+o"])
