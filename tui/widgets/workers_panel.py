"""The workers table: one row per worker, alive first, dead ones marked; while the broker is
unreachable every row says "unknown" (the last data is kept, but nobody vouches for it)."""

from __future__ import annotations

from typing import Any

from rich.cells import cell_len
from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey

from tui import fmt
from tui.model import WorkerBook

COLUMNS = (
    ("name", "Worker"), ("slots", "Slots"), ("hb", "Beat"), ("done", "Done"), ("failed", "Fail"),
    ("rate", "Rate/s"), ("host", "Host"), ("pid", "PID"), ("models", "Models"), ("tasks", "Current tasks"),
)


def cell_width(value: object) -> int:
    return value.cell_len if isinstance(value, Text) else cell_len(str(value))


def worker_cells(w: dict, age: float, unknown: bool = False) -> tuple:
    state = "unknown" if unknown else (w.get("state") or "alive")
    alive = state in ("alive", "draining")
    slots, busy = int(w.get("slots") or 0), int(w.get("busy") or 0)
    name = Text.assemble((f"{fmt.STATE_ICON.get(state, '?')} ", fmt.STATE_STYLE.get(state, "")),
                         (str(w.get("name") or w.get("id") or "?"),
                          "bold" if alive else ("dim" if unknown else "dim strike")))
    if state != "alive":
        name.append(f" {state}", style=fmt.STATE_STYLE.get(state, ""))
    slot_style = "bold #e0af68" if alive and slots and busy >= slots else ("" if alive else "dim")
    beat_style = "" if age < 2.5 else ("bold #e0af68" if alive else "dim")
    failed = int(w.get("failed") or 0)
    tasks = w.get("tasks") or []
    return (
        name,
        Text(f"{busy}/{slots}", style=slot_style, justify="right"),
        Text(fmt.duration(age) if alive and not unknown else "–", style=beat_style, justify="right"),
        Text(fmt.count(w.get("done") or 0), justify="right"),
        Text(str(failed) if failed else "·", style="bold #f7768e" if failed else "dim", justify="right"),
        Text(fmt.rate(w.get("tasks_per_s") or 0.0) if alive and not unknown else "–", justify="right"),
        str(w.get("host") or ""),
        Text(str(w.get("pid") or ""), justify="right"),
        ", ".join(w.get("models") or []) or "–",
        " ".join(str(t) for t in tasks[:6]) + (f" +{len(tasks) - 6}" if len(tasks) > 6 else "") or "–",
    )


class WorkersTable(DataTable):
    """Renders a WorkerBook; the row key is the worker name; Enter opens the worker's detail."""

    BINDINGS = [Binding("enter", "select_cursor", "Worker detail", key_display="⏎")]

    def __init__(self, book: WorkerBook, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, cursor_foreground_priority="renderable", **kwargs)
        self.book = book
        self.unknown = False  # the broker is unreachable: states are not known
        self._cells: dict[str, tuple] = {}
        self._order: list[str] = []

    @property
    def selected_worker(self) -> dict | None:
        if self.row_count == 0:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:
            return None
        return self.book.workers.get(str(key.value))

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    def redraw(self) -> None:
        rows = self.book.rows()
        order = [str(w.get("name") or w.get("id")) for w in rows]
        if order != self._order:
            self.clear()
            self._cells = {}
            for name, w in zip(order, rows, strict=False):
                cells = worker_cells(w, self.book.heartbeat_age(w), self.unknown)
                self._cells[name] = cells
                self.add_row(*cells, key=name)
            self._order = order
            return
        keys = [k for k, _ in COLUMNS]
        for name, w in zip(order, rows, strict=False):
            new = worker_cells(w, self.book.heartbeat_age(w), self.unknown)
            old = self._cells.get(name)
            if new != old:
                for i, key in enumerate(keys):
                    if old is None or old[i] != new[i]:
                        # widening a column relayouts the screen: only when the text no longer fits
                        wider = cell_width(new[i]) > self.columns[ColumnKey(key)].content_width
                        self.update_cell(name, key, new[i], update_width=wider)
                self._cells[name] = new

    @property
    def title(self) -> str:
        if self.unknown:
            return f"Workers · {len(self.book.workers)} known · state unknown (broker unreachable)"
        alive, dead = self.book.summary()
        busy, slots = self.book.capacity()
        out = f"Workers · {alive} alive · {busy}/{slots} slots busy"
        if dead:
            out += f" · {dead} gone"
        return out
