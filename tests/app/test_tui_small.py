"""The chat on a small terminal (60x20): dialogs scroll and every key and field stays reachable, the status bar
keeps its figures (the chart goes first), the footer keeps the essential keys."""

from textual.widgets import Button, OptionList, Sparkline

from app.chat_store import Chat, ChatStore
from app.tui_screens import ChatListScreen, SettingsScreen
from app.tui_widgets import ChatFooter, StatusBar
from tests.app.pilot import make_app, run

SMALL = (60, 20)


def visible(widget) -> bool:
    """The whole widget is on screen, inside every scrolling container above it."""
    return widget.screen.find_widget(widget).region.size == widget.outer_size and \
        widget.app.screen.region.contains_region(widget.region)


def test_settings_scroll_and_every_field_and_button_is_reachable(tiny):
    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=SMALL) as pilot:
            await pilot.press("ctrl+t")
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, SettingsScreen)
            dialog = screen.query_one("#dialog")
            assert dialog.max_scroll_y > 0  # taller than the screen: it scrolls rather than cuts
            seen = set()
            for _ in range(12):  # Tab through every field to the buttons: each one comes into view
                await pilot.press("tab")
                await pilot.pause()
                focused = app.focused
                seen.add(focused.id)
                assert visible(focused), focused.id
                if focused.id == "save":
                    break
            assert {"temperature", "seed", "thinking", "save"} <= seen and dialog.scroll_y > 0
            assert isinstance(app.focused, Button)
            await pilot.press("enter")  # the Save button, reached by keys alone
            await pilot.pause()
            assert not isinstance(app.screen, SettingsScreen)
    run(scenario())


def test_chat_list_scrolls_to_the_last_chat(tiny):
    store = ChatStore()
    for i in range(25):
        store.save(Chat(id=f"20250101-1200{i:02d}-aaaaaa", model="tiny",
                        messages=[{"role": "user", "content": f"chat number {i}"}]))
    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=SMALL) as pilot:
            await pilot.press("ctrl+o")
            await pilot.pause()
            assert isinstance(app.screen, ChatListScreen)
            hint = app.screen.query_one(".hint")
            app.screen.query_one("#dialog").scroll_end(animate=False)
            await pilot.pause()
            assert visible(hint)  # the keys' hint below the list is reachable
            await pilot.press("end", "enter")  # the oldest chat, last in the list
            await pilot.pause()
            assert app.session.chat.id == "20250101-120000-aaaaaa"
            assert len(app.screen.query(OptionList)) == 0
    run(scenario())


def test_status_bar_drops_the_chart_before_the_memory_figure(tiny):
    app = make_app(tiny)
    app.model_name = "/Users/someone/models/Qwen3-30B-A3B-Instruct-2507-4bit"

    async def scenario():
        async with app.run_test(size=SMALL) as pilot:
            await pilot.pause()
            bar = app.query_one(StatusBar)
            text = str(bar.render())
            assert not app.query_one(Sparkline).display
            assert text.endswith("mem 0 B") and len(text) <= bar.size.width
            assert text.startswith("…") and "4bit" in text  # the name's end (the model) stays
            await pilot.resize_terminal(160, 20)
            await pilot.pause()
            assert app.query_one(Sparkline).display
            assert str(app.query_one(StatusBar).render()).startswith("/Users/someone")
    run(scenario())


def test_footer_keeps_the_essential_keys(tiny):
    app = make_app(tiny)

    async def scenario():
        async with app.run_test(size=SMALL) as pilot:
            await pilot.pause()
            footer = app.query_one(ChatFooter)
            shown = {key.action for key in footer.children if app.screen.region.contains_region(key.region)}
            assert set(ChatFooter.ESSENTIAL) <= shown
            assert not footer.show_command_palette
            await pilot.click(next(key for key in footer.children if getattr(key, "action", "") == "settings"))
            await pilot.pause()
            assert isinstance(app.screen, SettingsScreen)
    run(scenario())
