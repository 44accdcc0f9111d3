"""The jobs table: one page of jobs from the broker, rows updated in place by job events.

The broker filters and pages (newest first), so the table never holds more than one
page however many jobs the store has.  Sorting reorders the page on screen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.message import Message
from textual.widgets import DataTable

from tui import fmt

SORTS: tuple[tuple[str | None, str], ...] = (
    (None, "newest"),
    ("state", "state"),
    ("progress", "progress"),
    ("duration", "duration"),
    ("errors", "errors"),
    ("model", "model"),
)
_STATE_ORDER = {"running": 0, "queued": 1, "failed": 2, "cancelled": 3, "done": 4}


def sort_key(key: str | None, now: float) -> Callable[[dict], Any]:
    if key == "state":
        return lambda j: (_STATE_ORDER.get(j.get("state"), 9), -(j.get("created") or 0))
    if key == "progress":
        return lambda j: (fmt.percent(j), -(j.get("created") or 0))
    if key == "duration":
        return lambda j: -(fmt.job_duration(j, now) or 0)
    if key == "errors":
        return lambda j: (-(j.get("errors") or 0), -(j.get("created") or 0))
    if key == "model":
        return lambda j: (model_label(j), -(j.get("created") or 0))
    return lambda j: -(j.get("created") or 0)


def model_label(job: dict) -> str:
    processor = job.get("processor") or "rembg"
    if processor != "rembg":
        return processor
    return str(job.get("model") or "rembg")


@dataclass
class PageRequest(Message):
    """The cursor ran off the top or bottom of the page: show the previous/next one."""

    delta: int


class JobsTable(DataTable):
    """A page of jobs; the row key is the job id.  Moving past the last row asks for the
    next page (and past the first, the previous), so paging feels like scrolling."""

    def __init__(self, clock: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, cursor_foreground_priority="renderable", **kwargs)
        self.clock = clock
        self.jobs: dict[str, dict] = {}
        self.sort_by: str | None = None
        self.wide = False
        self._cells: dict[str, tuple] = {}
        self.land: str | None = None  # where the cursor goes on the next page: "top" / "bottom"

    def on_mount(self) -> None:
        self._build_columns()

    # ------------------------------------------------------------------ columns

    def _columns(self) -> list[tuple[str, str, int | None]]:
        cols = [("id", "Job", 13 if self.wide else 8), ("submitted", "Submitted" if self.wide else "At", None),
                ("model", "Model", None if self.wide else 10),
                ("progress", "Progress", None), ("state", "State", None), ("duration", "Time", None),
                ("errors", "Err", None)]
        if self.wide:
            cols += [("tenant", "Tenant", None), ("priority", "Pri", None)]
        return cols

    def _build_columns(self) -> None:
        self.clear(columns=True)
        for key, label, width in self._columns():
            self.add_column(label, key=key, width=width)
        self._cells = {}
        self._fill(list(self.jobs.values()), keep=None)

    def set_wide(self, wide: bool) -> None:
        if wide != self.wide:
            self.wide = wide
            self._build_columns()

    @property
    def bar_width(self) -> int:
        return 24 if self.wide else 8

    def cells(self, job: dict, now: float) -> tuple:
        jid = job["job_id"]
        errors = int(job.get("errors") or 0)
        row = [
            Text(jid if self.wide else fmt.short_id(jid), style="bold"),
            fmt.clock(job.get("created"), now, short=not self.wide),
            Text(model_label(job), overflow="ellipsis", no_wrap=True),
            fmt.progress_bar(job, self.bar_width),
            fmt.state_text(job.get("state") or "queued"),
            Text(fmt.duration(fmt.job_duration(job, now)), justify="right"),
            Text(str(errors) if errors else "·", style="bold #f7768e" if errors else "dim", justify="right"),
        ]
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

    def _fill(self, jobs: list[dict], keep: str | None) -> None:
        now = self.clock()
        ordered = sorted(jobs, key=sort_key(self.sort_by, now)) if self.sort_by else list(jobs)
        self.clear()
        self._cells = {}
        for job in ordered:
            cells = self.cells(job, now)
            self._cells[job["job_id"]] = cells
            self.add_row(*cells, key=job["job_id"])
        if keep is not None and keep in self.jobs:
            self.move_cursor(row=self.get_row_index(keep), animate=False)

    def resort(self, key: str | None) -> None:
        self.sort_by = key
        current = self.selected_job
        self._fill(list(self.jobs.values()), keep=current["job_id"] if current else None)

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
            if job.get("state") in ("queued", "running"):
                self._update_row(jid, now)

    def _update_row(self, jid: str, now: float) -> int:
        new = self.cells(self.jobs[jid], now)
        old = self._cells.get(jid)
        if old == new:
            return 0
        self._cells[jid] = new
        keys = [k for k, _, _ in self._columns()]
        for i, key in enumerate(keys):
            if old is None or old[i] != new[i]:
                self.update_cell(jid, key, new[i])
        return 1
