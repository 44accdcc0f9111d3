"""The overview panel: task counts by state, throughput with a sparkline, queue depth,
time to drain and worker occupancy."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from shared.states import TASK_STATES
from tui import fmt
from tui.widgets.sparkline import Sparkline

STATES = TASK_STATES


def counts_line(stats: dict, narrow: bool, slim: bool = False) -> Text:
    """'◌ 1,204 queued  ▶ 8 running  ✔ 10,233 done ...  │ 152 jobs' (compact when narrow; icons
    and numbers only when slim, so 60 columns never wrap a label onto the next line)."""
    num = fmt.compact if narrow or slim else fmt.count
    gap = " " if narrow or slim else "  "
    text = Text(no_wrap=True, overflow="ellipsis")
    for state in STATES:
        n = stats.get(state)
        style = fmt.STATE_STYLE[state] if n else "dim"
        text.append(f"{fmt.STATE_ICON[state]}" + ("" if slim else " "), style=style)
        text.append(num(n), style=f"bold {style}" if n else "dim")
        text.append(gap if slim else f" {state}{gap}", style="dim" if not n else "")
    if not narrow and not slim:
        text.append("│ ", style="dim")
        text.append(num(stats.get("jobs")), style="bold")
        text.append(" jobs")
    return text


def rates_line(stats: dict, narrow: bool = False, slim: bool = False) -> Text:
    """'12.3 tasks/s  12.3 img/s  queue 1,204  drain ~1m38s  workers 2/3  slots 8/12'."""
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(fmt.rate(stats.get("tasks_per_s")), style="bold #7dcfff")
    text.append(" tasks/s  ")
    if not slim:
        text.append(fmt.rate(stats.get("images_per_s")), style="bold #7dcfff")
        text.append(" img/s  ")
    text.append("queue ", style="dim")
    text.append(fmt.count(stats.get("queue_depth")), style="bold")
    text.append("  drain ", style="dim")
    text.append(drain_text(stats))
    if not slim:
        text.append("  workers ", style="dim")
        text.append(f"{stats.get('workers_busy', 0)}/{stats.get('workers_total', 0)}", style="bold")
    text.append("  slots ", style="dim")
    text.append(f"{stats.get('slots_used', 0)}/{stats.get('slots_total', 0)}", style="bold")
    return text


def drain_text(stats: dict) -> Text:
    if "queued" not in stats:
        return Text("–", style="dim")  # nothing heard from the broker yet
    if stats.get("paused") and stats.get("queue_depth"):
        return Text("paused", style="bold #e0af68")
    eta = stats.get("eta_s")
    if not stats.get("queue_depth") and not stats.get("running"):
        return Text("idle", style="dim")
    if eta is None:
        return Text("∞", style="#f7768e") if not stats.get("workers_total") else Text("–", style="dim")
    return Text(f"~{fmt.duration(eta)}", style="bold")


def wide_table(stats: dict) -> Table:
    """Five rows of counts on the left, throughput and capacity on the right."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(min_width=13)
    grid.add_column(justify="right", min_width=9)
    grid.add_column(style="dim", min_width=9)
    grid.add_column(min_width=12)
    right = [
        ("tasks/s", Text(fmt.rate(stats.get("tasks_per_s")), style="bold #7dcfff")),
        ("images/s", Text(fmt.rate(stats.get("images_per_s")), style="bold #7dcfff")),
        ("queue", Text(fmt.count(stats.get("queue_depth")), style="bold")),
        ("drain in", drain_text(stats)),
        ("workers", Text.assemble((f"{stats.get('workers_busy', 0)}/{stats.get('workers_total', 0)}", "bold"),
                                  " busy  ", (f"{stats.get('slots_used', 0)}/{stats.get('slots_total', 0)}", "bold"),
                                  " slots")),
    ]
    for state, (label, value) in zip(STATES, right, strict=False):
        n = stats.get(state)
        style = fmt.STATE_STYLE[state] if n else "dim"
        grid.add_row(Text(f"{fmt.STATE_ICON[state]} {state}", style=style),
                     Text(fmt.count(n), style=f"bold {style}" if n else "dim"), label, value)
    return grid


def roomy(widget) -> bool:
    """Whether the widget's screen is in the large layout (>= 120x36)."""
    screen = widget.screen if widget.is_attached else None
    return bool(screen and screen.has_class("-wide") and screen.has_class("-tall"))


class StatsPanel(Horizontal):
    """Counts, rates and a sparkline of tasks/s for the last `history` seconds."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stats: dict = {}
        self.border_title = "Overview"
        self._shown: tuple = ()  # what the text shows: redrawn only when it changes (10 batches a second)

    def compose(self) -> ComposeResult:
        yield Static(id="stats-text")
        yield Sparkline(id="stats-spark")

    def on_resize(self) -> None:
        self.update(self.stats)

    def update(self, stats: dict) -> None:
        """`stats`: the broker's stats with the app's view on top (counts moved by job events,
        workers and slots from the workers table, `chart` and `chart_label`)."""
        self.stats = stats
        text = self.query_one("#stats-text", Static)
        shown = (roomy(self), self.size.width, tuple(sorted((k, str(v)) for k, v in stats.items()
                                                            if k not in ("chart", "history", "by_tenant", "t"))))
        if shown != self._shown:
            self._shown = shown
            if roomy(self):
                text.update(wide_table(stats), layout=False)  # fixed size: skip relayout
            else:
                slim = self.size.width < 70
                narrow = self.size.width < 100
                lines = Text("\n", no_wrap=True, overflow="ellipsis")
                text.update(lines.join([counts_line(stats, narrow, slim), rates_line(stats, narrow, slim)]),
                            layout=False)
        spark = self.query_one(Sparkline)
        chart = tuple(float(v) for v in (stats.get("chart") or stats.get("history") or []))
        if chart != spark.data:
            spark.data = chart
        peak = max(chart, default=0)
        spark.border_title = f"tasks/s · {stats.get('chart_label') or 'last 2m'}"
        spark.border_subtitle = f"peak {fmt.rate(peak)}/s"
        if stats.get("paused"):
            self.border_subtitle = "‖ dispatch paused (p resumes)"
            self.add_class("-paused")
        else:
            self.border_subtitle = "" if roomy(self) else f"chart: tasks/s · {stats.get('chart_label') or 'last 2m'}"
            self.remove_class("-paused")
