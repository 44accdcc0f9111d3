"""The jobs table: one page of jobs from the broker, rows updated in place by job events.

The broker filters, sorts (every job, not just this page) and pages, so the table never
holds more than one page however many jobs the store has.  Columns follow the width:
60 columns show id, progress, state and time; 80 add the model and failures; 120 and up
the submission time, tenant and priority.  Marked rows (space) are the target of the bulk
actions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len
from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey

from shared.states import ACTIVE, TaskState
from tui import fmt

# the column that carries the header marker for each of the broker's sort keys
SORT_COLUMN = {"created": "submitted", "state": "state", "progress": "progress", "errors": "errors",
               "tenant": "tenant"}
COLUMN_SORT = {col: key for key, col in SORT_COLUMN.items()} | {"id": "created"}


def model_label(job: dict) -> str:
    processor = job.get("processor") or "rembg"
    if processor != "rembg":
        return processor
    return str(job.get("model") or "rembg")


@dataclass
class PageRequest(Message):
    """The cursor ran off the top or bottom of the page: show the previous/next one."""

    delta: int


@dataclass
class SortRequest(Message):
    """A column header was clicked: sort every job by its key (again: the other way)."""

    sort: str


class JobsTable(DataTable):
    """A page of jobs; the row key is the job id.  Moving past the last row asks for the
    next page (and past the first, the previous), so paging feels like scrolling."""

    BINDINGS = [
        Binding("enter", "select_cursor", "Open", key_display="⏎", tooltip="Open the job: tasks, errors, previews"),
        Binding("space", "mark", "Mark", key_display="␣", tooltip="Mark the job (c, r and d act on the marked jobs)"),
        Binding("a", "mark_all", "Mark all", show=False, tooltip="Mark every job on this page (again: none)"),
    ]

    def __init__(self, clock: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, cursor_foreground_priority="renderable", **kwargs)
        self.clock = clock
        self.jobs: dict[str, dict] = {}
        self.marked: set[str] = set()
        self.sort: tuple[str, bool] = ("created", True)
        self.size_class = "narrow"  # slim (< 70 columns), narrow, wide (>= 120)
        self._cells: dict[str, tuple] = {}
        self.land: str | None = None  # where the cursor goes on the next page: "top" / "bottom"

    def on_mount(self) -> None:
        self._build_columns()

    # ------------------------------------------------------------------ columns

    @property
    def wide(self) -> bool:
        return self.size_class == "wide"

    def _columns(self) -> list[tuple[str, str, int | None]]:
        """(key, label, width); fixed widths where the text changes, so a redraw never cuts it."""
        if self.size_class == "slim":
            return [("id", "Job", 9), ("progress", "Progress", None), ("state", "State", 11),
                    ("duration", "Time", 6)]
        cols: list[tuple[str, str, int | None]] = [("id", "Job", 14 if self.wide else 9)]
        if self.wide:
            cols.append(("submitted", "Submitted", None))
        cols += [("model", "Model", None if self.wide else 10), ("progress", "Progress", None),
                 ("state", "State", 11), ("duration", "Time", 6), ("errors", "Err", 5)]
        if self.wide:
            cols += [("tenant", "Tenant", None), ("priority", "Pri", 3)]
        return cols

    def _label(self, key: str, label: str) -> Text:
        sort, descending = self.sort
        marked = SORT_COLUMN.get(sort) == key or (sort == "created" and key == "id"
                                                  and "submitted" not in self._keys())
        if marked:
            return Text.assemble(label, (" ▼" if descending else " ▲", "bold #7aa2f7"))
        return Text(label)

    def _keys(self) -> list[str]:
        return [k for k, _, _ in self._columns()]

    def _build_columns(self) -> None:
        self.clear(columns=True)
        for key, label, width in self._columns():  # fixed widths leave room for a label's " ▼"
            self.add_column(self._label(key, label), key=key, width=width)
        self._cells = {}
        self._fill(list(self.jobs.values()), keep=None)

    def set_size_class(self, size_class: str) -> None:
        if size_class != self.size_class:
            self.size_class = size_class
            self._build_columns()

    def set_sort(self, sort: str, descending: bool) -> None:
        if (sort, descending) != self.sort:
            self.sort = (sort, descending)
            current = self.selected_job
            self._build_columns()
            if current is not None and current["job_id"] in self.jobs:
                self.move_cursor(row=self.get_row_index(current["job_id"]), animate=False)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        sort = COLUMN_SORT.get(str(event.column_key.value))
        if sort is not None:
            self.post_message(SortRequest(sort))

    @property
    def bar_width(self) -> int:
        return {"slim": 6, "narrow": 8}.get(self.size_class, 24)

    def cells(self, job: dict, now: float) -> tuple:
        jid = job["job_id"]
        errors = int(job.get("errors") or job.get("failed") or 0)
        ident = Text(("●" if jid in self.marked else " ") + (jid if self.wide else fmt.short_id(jid)), style="bold")
        if jid in self.marked:
            ident.stylize("#7aa2f7", 0, 1)
        row: list[Any] = [ident]
        if self.wide:
            row.append(fmt.clock(job.get("created"), now))
        if self.size_class != "slim":
            row.append(Text(model_label(job), overflow="ellipsis", no_wrap=True))
        row += [
            fmt.progress_bar(job, self.bar_width),
            fmt.state_text(job.get("state") or TaskState.QUEUED),
            Text(fmt.duration(fmt.job_duration(job, now)), justify="right"),
        ]
        if self.size_class != "slim":
            row.append(Text(fmt.compact(errors) if errors else "·", style="bold #f7768e" if errors else "dim",
                            justify="right"))
        if self.wide:
            row += [str(job.get("tenant") or ""), Text(str(job.get("priority") or 0), justify="right")]
        return tuple(row)

    # ------------------------------------------------------------------ data

    @property
    def selected_job(self) -> dict | None:
        if not self.jobs or self.row_count == 0:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:
            return None
        return self.jobs.get(str(key.value))

    def targets(self) -> list[dict]:
        """The marked jobs (in table order), else the one under the cursor."""
        if self.marked:
            return [self.jobs[j] for j in self.jobs if j in self.marked]
        job = self.selected_job
        return [job] if job is not None else []

    def show_page(self, jobs: list[dict]) -> None:
        """Replace the rows with a new page, keeping the cursor on the same job."""
        current = self.selected_job
        self.jobs = {j["job_id"]: dict(j) for j in jobs}
        self._fill(jobs, keep=current["job_id"] if current and not self.land else None)
        if self.land and self.row_count:
            self.move_cursor(row=0 if self.land == "top" else self.row_count - 1, animate=False)
        self.land = None

    def action_cursor_down(self) -> None:
        if self.row_count and self.cursor_row >= self.row_count - 1:
            self.post_message(PageRequest(1))
            return
        super().action_cursor_down()

    def action_cursor_up(self) -> None:
        if self.row_count and self.cursor_row <= 0:
            self.post_message(PageRequest(-1))
            return
        super().action_cursor_up()

    def action_mark(self) -> None:
        job = self.selected_job
        if job is None:
            return
        self.marked ^= {job["job_id"]}
        self._update_row(job["job_id"], self.clock())
        if self.cursor_row < self.row_count - 1:
            self.move_cursor(row=self.cursor_row + 1)
        self.post_message(MarksChanged())

    def action_mark_all(self) -> None:
        """Mark every job on this page (or, when all are marked, none)."""
        self.set_marks(set() if self.jobs and set(self.jobs) <= self.marked else set(self.jobs))

    def set_marks(self, marked: set[str]) -> None:
        changed = self.marked ^ marked
        self.marked = set(marked)
        now = self.clock()
        for jid in changed:
            if jid in self.jobs:
                self._update_row(jid, now)
        self.post_message(MarksChanged())

    def _fill(self, jobs: list[dict], keep: str | None) -> None:
        now = self.clock()
        self.clear()
        self._cells = {}
        for job in jobs:
            cells = self.cells(job, now)
            self._cells[job["job_id"]] = cells
            self.add_row(*cells, key=job["job_id"])
        if keep is not None and keep in self.jobs:
            self.move_cursor(row=self.get_row_index(keep), animate=False)

    def update_jobs(self, jobs: dict[str, dict]) -> int:
        """Rewrite the rows of jobs on this page; returns how many rows changed."""
        now = self.clock()
        changed = 0
        for jid, job in jobs.items():
            if jid not in self.jobs:
                continue
            self.jobs[jid] = job
            changed += self._update_row(jid, now)
        return changed

    def tick(self) -> None:
        """Advance the running jobs' durations (called once a second)."""
        now = self.clock()
        for jid, job in self.jobs.items():
            if job.get("state") in ACTIVE:
                self._update_row(jid, now)

    def _update_row(self, jid: str, now: float) -> int:
        new = self.cells(self.jobs[jid], now)
        old = self._cells.get(jid)
        if old == new:
            return 0
        self._cells[jid] = new
        for i, key in enumerate(self._keys()):
            if old is None or old[i] != new[i]:
                column = self.columns.get(ColumnKey(key))
                # an auto-width column (progress, model) widens when its text grows; fixed ones never cut
                wider = column is not None and column.auto_width and cell_width(new[i]) > column.content_width
                self.update_cell(jid, key, new[i], update_width=wider)
        return 1


@dataclass
class MarksChanged(Message):
    """The set of marked jobs changed (the title counts them)."""


def cell_width(value: object) -> int:
    return value.cell_len if isinstance(value, Text) else cell_len(str(value))
