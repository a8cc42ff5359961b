"""SVG snapshots of the reply features at 60x20, the smallest screen we support: stats under replies, the code
block chooser, the export dialog. Deterministic as tests/app/test_snapshots.py's (the same fixtures); the stats
are fixed figures in the chat, not measured. Update after an intended change:
python -m pytest tests/app/test_snapshots_replies.py --snapshot-update"""

from app.reply_stats import STATS_KEYS
from tests.app.pilot import make_app
from tests.app.test_snapshots import dark, plain_textual, saved_chat  # noqa: F401 (plain_textual: autouse)

SMALL = (60, 20)
STATS = dict(zip(STATS_KEYS, [1536, 812.5, 42, 31.25, 1.9]))


def chat_with_stats():
    chat = saved_chat()
    for m in chat.messages[3:]:
        if m["role"] == "assistant":
            m["stats"] = dict(STATS)
    chat.messages[-1]["content"] = "Either\n\n```sh\nmlxm chat\n```\n\nor\n\n```python\nimport mlxmodels\n```"
    return chat


def shot(snap_compare, tiny, press):
    return snap_compare(make_app(tiny, chat=chat_with_stats()), terminal_size=SMALL, press=press, run_before=dark)


def test_stats_under_replies(snap_compare, tiny):
    assert shot(snap_compare, tiny, ["ctrl+s"])


def test_code_block_chooser(snap_compare, tiny):
    assert shot(snap_compare, tiny, ["f3"])


def test_export_dialog(snap_compare, tiny):
    assert shot(snap_compare, tiny, ["f4"])
