"""`?`: every key of the screen underneath, grouped by where it works, with what it does."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from tui.widgets.keybar import KeyBar

# keys Textual binds everywhere that are not for the user of this dashboard
_HIDDEN = {"help_quit", "app.help_quit", "focus_next", "focus_previous", "app.focus_next", "app.focus_previous",
           "copy_text", "screen.copy_text"}
_MOVES = ("cursor_", "scroll_", "page_")  # the tables' own cursor keys: one group at the end
RANK = {"this screen": 0, "the focused table": 1, "everywhere": 2, "moving around": 3}


def key_rows(screen: Screen) -> list[tuple[str, str, str]]:
    """(where, keys, what) for every active binding of `screen`, one row per action."""
    app = screen.app
    by_action: dict[tuple[str, str], list[str]] = {}
    order: list[tuple[str, str]] = []
    for node, binding, enabled, _tooltip in screen.active_bindings.values():
        if binding.action in _HIDDEN or binding.system and not binding.description:
            continue
        where = "everywhere" if node is app else ("this screen" if node is screen else "the focused table")
        if binding.action.startswith(_MOVES):
            where = "moving around"
        what = binding.tooltip or binding.description or binding.action.replace("_", " ")
        if not enabled:
            what += " (not now)"
        slot = (where, what)
        if slot not in by_action:
            by_action[slot] = []
            order.append(slot)
        # the key bar's "1-6" stands for six keys: here each key has its own line
        shown = binding.key if binding.key.isdigit() else app.get_key_display(binding)
        by_action[slot].append(shown)
    order.sort(key=lambda s: RANK[s[0]])
    return [(where, " ".join(dict.fromkeys(by_action[(where, what)])), what) for where, what in order]


def help_table(rows: list[tuple[str, str, str]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(justify="right", style="bold #7aa2f7", no_wrap=True)
    grid.add_column()
    last = None
    for where, keys, what in rows:
        if where != last:
            if last is not None:
                grid.add_row("", "")
            grid.add_row("", Text(where.capitalize(), style="bold underline"))
            last = where
        grid.add_row(keys, what)
    return grid


class HelpScreen(ModalScreen[None]):
    """Lists the keys of `screen`; any of Esc, ? or q closes it."""

    BINDINGS = [
        Binding("escape,question_mark,q", "close", "Close", key_display="esc"),
        Binding("ctrl+p", "app.command_palette", "Commands: search every action", key_display="^p"),
    ]

    def __init__(self, screen: Screen, title: str) -> None:
        super().__init__(classes="dialog-screen")
        self.rows = key_rows(screen)
        self.title_text = title

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help", classes="dialog"):
            yield Static(help_table(self.rows), id="help-keys")
            yield Static(Text("^p opens the command palette: type any word of an action (filter, sort, "
                              "purge, worker…)", style="dim"), id="help-palette")
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one("#help").border_title = f"Keys · {self.title_text}"
        self.query_one("#help").focus()

    def action_close(self) -> None:
        self.dismiss(None)
