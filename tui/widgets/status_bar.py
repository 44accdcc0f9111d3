"""The top line: where we are connected, whether the broker answers, whether dispatch
is paused.  During an outage it says so in place while the panels keep the last data."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table
from rich.text import Text
from textual.widget import Widget

from tui import fmt


@dataclass
class Connection:
    """What the status bar shows; the app updates it from feed messages."""

    endpoint: str
    state: str = "connecting"  # connecting | connected | down
    error: str = ""
    retry_at: float | None = None  # wall time of the next attempt
    since: float | None = None  # start of the outage
    last_data: float | None = None  # wall time of the last message from the broker
    paused: bool = False


class StatusBar(Widget):
    """One line: `cutq  tcp://host:5555  ● connected  ⏸ paused          12:04:05`."""

    DEFAULT_CSS = """
    StatusBar { height: 1; dock: top; }
    """

    def __init__(self, conn: Connection, clock, **kwargs) -> None:
        super().__init__(**kwargs)
        self.conn = conn
        self.clock = clock
        self.crumb = ""

    def sync(self) -> None:
        """Redraw after the connection changed (the class first: render must not restyle)."""
        self.set_class(self.conn.state == "down", "-down")
        self.refresh()

    def on_mount(self) -> None:
        self.set_class(self.conn.state == "down", "-down")

    def render(self) -> Table:
        now = self.clock()
        grid = Table.grid(expand=True)
        grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        grid.add_column(justify="right", no_wrap=True)
        right = "" if self.conn.state == "down" else fmt.clock(now, now) + " "
        grid.add_row(self.left_text(), Text(right, style="dim"))
        return grid

    def left_text(self) -> Text:
        c, now = self.conn, self.clock()
        left = Text.assemble((" cutq ", "bold reverse"), " ")
        if self.crumb:
            left.append(f"{self.crumb}  ", style="bold")
        left.append(c.endpoint, style="dim")
        left.append("  ")
        if c.state == "connected":
            left.append("● connected", style="bold #9ece6a")
        elif c.state == "connecting":
            left.append("◌ connecting…", style="bold #e0af68")
        else:
            left.append("✖ broker unreachable", style="bold #f7768e")
            if c.retry_at is not None:
                left.append(f" · retry in {fmt.duration(max(0.0, c.retry_at - now))}", style="#f7768e")
            if c.last_data:
                left.append(f" · data from {fmt.clock(c.last_data, now)}", style="#e0af68")
        if c.paused and c.state != "down":
            left.append("  ‖ dispatch paused", style="bold #e0af68")
        return left
