"""The bottom line of every screen: the keys that matter here, whole or not at all.

Textual's Footer cuts its last key mid-word when the terminal is narrow ("t Fil", a
stray "p" of "^p palette" at 60 columns).  This one lays hints out by the screen's
`HINT_PRIORITY`, `? Help` first and `q Quit` (or `esc Back`) last, and leaves out whole
hints that do not fit; `?` lists every key.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text
from textual.binding import Binding
from textual.widget import Widget

HELP_ACTIONS = ("app.help", "help")
LAST_ACTIONS = ("app.quit", "quit", "back", "close", "app.pop_screen")


def hints(active: dict, key_display) -> list[tuple[str, str, str]]:
    """(key, description, action) for the shown, enabled bindings, one per action, in binding order."""
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for _node, binding, enabled, _tooltip in active.values():
        if not binding.show or not enabled or binding.action in seen or not binding.description:
            continue
        seen.add(binding.action)
        out.append((key_display(binding), binding.description, binding.action))
    return out


def layout(items: list[tuple[str, str, str]], width: int,
           priority: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """The hints that fit in `width` cells: the help hint first, the quit/back hint last when there
    is room for both, the others in `priority` order (actions named there first) while they fit:
    a hint is kept whole or dropped, never cut."""
    first = [h for h in items if h[2] in HELP_ACTIONS][:1]
    ends = [h for h in items if h[2] in LAST_ACTIONS]
    last = sorted(ends, key=lambda h: h[2] in ("app.quit", "quit"))[:1]  # back (if any) before quit
    rank = {action: i for i, action in enumerate(priority)}
    middle = sorted((h for h in items if h not in first and h not in ends),
                    key=lambda h: rank.get(h[2], len(rank)))
    chosen = list(first)
    used = sum(hint_width(h) for h in first)
    reserve = sum(hint_width(h) for h in last)
    for h in middle:
        if used + hint_width(h) + reserve <= width:
            chosen.append(h)
            used += hint_width(h)
    if used + reserve <= width:
        chosen += last
    return chosen


def hint_width(hint: tuple[str, str, str]) -> int:
    key, description, _ = hint
    return cell_len(key) + 1 + cell_len(description) + 1  # "k description" and a gap


class KeyBar(Widget):
    """One line of key hints for the screen it is on (docked at the bottom)."""

    DEFAULT_CSS = """
    KeyBar {
        height: 1;
        dock: bottom;
        background: $panel;
        color: $text-muted;
    }
    """

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._changed)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _changed(self, screen) -> None:
        self.refresh()

    def items(self) -> list[tuple[str, str, str]]:
        priority = getattr(self.screen, "HINT_PRIORITY", ())
        return layout(hints(self.screen.active_bindings, self._key_display), self.size.width, priority)

    def _key_display(self, binding: Binding) -> str:
        return self.app.get_key_display(binding)

    def render(self) -> Text:
        line = Text(no_wrap=True, overflow="crop")
        for key, description, _ in self.items():
            line.append(key, style="bold #1a1b26 on #7aa2f7")
            line.append(f" {description} ")
        line.rstrip()
        return line
