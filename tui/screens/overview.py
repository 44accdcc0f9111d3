"""The main screen: overview stats, the jobs table and the workers table."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Input

from tui.model import JOB_FILTERS, JOB_SORTS, page_range
from tui.widgets.jobs_table import JobsTable, MarksChanged, PageRequest, SortRequest
from tui.widgets.keybar import KeyBar
from tui.widgets.stats_panel import StatsPanel, roomy
from tui.widgets.status_bar import StatusBar
from tui.widgets.workers_panel import WorkersTable

if TYPE_CHECKING:
    from tui.app import CutqApp

# a new sort column starts the way one usually wants it: newest, most done, most failures first
SORT_DESCENDING = {"created": True, "state": False, "progress": True, "errors": True, "tenant": False}
FILTER_KEYS = ("1", "2", "3", "4", "5", "6")  # all, queued, running, done, failed, cancelled


def filter_bindings(action: str, noun: str) -> list[Binding]:
    """1-6: show all, queued, running, done, failed or cancelled rows (one key each, no cycling);
    the key bar shows them as one hint, `1-6 Filter`."""
    out = []
    for key, state in zip(FILTER_KEYS, JOB_FILTERS, strict=True):
        tooltip = f"Filter: show {state or 'all'} {noun}"
        if key == "1":
            out.append(Binding(key, f"{action}({state!r})", "Filter", key_display="1-6", tooltip=tooltip))
        else:
            out.append(Binding(key, f"{action}({state!r})", tooltip, show=False, tooltip=tooltip))
    return out


class OverviewScreen(Screen):
    """Everything at a glance; Enter opens a job (or, on the workers table, a worker)."""

    app: CutqApp

    # what the key bar shows first (at 80 columns: up to the filter and search)
    HINT_PRIORITY = ("select_cursor", "app.submit", "cancel", "retry", "delete", "filter(None)", "search", "mark",
                     "cycle_sort", "app.pause", "app.resume")
    BINDINGS = [
        Binding("s", "app.submit", "Submit", tooltip="Submit images: a file or a folder as a job"),
        Binding("c", "cancel", "Cancel", tooltip="Cancel the marked jobs, or this one"),
        Binding("r", "retry", "Retry", tooltip="Retry every failed task of the marked jobs, or of this one"),
        Binding("d", "delete", "Delete", tooltip="Delete the marked jobs, or this one (asks first)"),
        *filter_bindings("filter", "jobs"),
        Binding("slash", "search", "Search", tooltip="Search jobs by id prefix or file name"),
        Binding("o", "cycle_sort", "Sort", tooltip="Sort jobs by the next column (every job, on the broker)"),
        Binding("O", "reverse_sort", "Reverse", key_display="O", show=False, tooltip="Sort jobs the other way"),
        Binding("f", "fetch", "Fetch", show=False, tooltip="Fetch results of this job into a folder"),
        Binding("D", "purge", "Purge", key_display="D", show=False,
                tooltip="Purge finished jobs: delete them by state and age (asks first)"),
        Binding("w", "toggle_focus", "Workers", show=False,
                tooltip="Workers table: move between the jobs and the workers (then ⏎: worker detail)"),
        Binding("h", "app.chart_span", "Chart span", show=False, tooltip="Chart: last 2 minutes / last hour"),
        Binding("right_square_bracket", "page(1)", "Next page", show=False, tooltip="Next page of jobs"),
        Binding("left_square_bracket", "page(-1)", "Previous page", show=False, tooltip="Previous page of jobs"),
        Binding("escape", "clear", "Clear", show=False, tooltip="Clear the search and the marks"),
    ]

    def __init__(self) -> None:
        super().__init__(id="overview")
        self._search_timer: Timer | None = None
        self.ready = False  # feed messages can arrive before the widgets exist

    def compose(self) -> ComposeResult:
        app = self.app
        yield StatusBar(app.conn, app.clock)
        yield StatsPanel(id="stats", classes="panel")
        with Vertical(id="jobs-panel", classes="panel"):
            yield Input(placeholder="search: job id prefix or file name (Enter: back to the table, Esc: clear)",
                        id="search", compact=True)
            yield JobsTable(app.clock, id="jobs")
        with Vertical(id="workers-panel", classes="panel"):
            yield WorkersTable(app.worker_book, id="workers")
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one("#search").display = False
        table = self.query_one(JobsTable)
        table.focus()
        self.ready = True
        table.set_sort(self.app.jobs_query.sort, self.app.jobs_query.descending)
        table.show_page(self.app.jobs_page)
        self.refresh_all()

    def on_resize(self) -> None:
        width = self.size.width
        self.query_one(JobsTable).set_size_class("wide" if width >= 120 else "narrow" if width >= 70 else "slim")
        self.query_one(StatsPanel).update(self.app.stats_view())
        self.refresh_jobs_title()

    # ------------------------------------------------------------------ fed by the app

    def refresh_all(self) -> None:
        if not self.ready:
            return
        self.query_one(StatsPanel).update(self.app.stats_view())
        self.show_workers()
        self.refresh_jobs_title()
        self.query_one(StatusBar).refresh()

    def show_stats(self) -> None:
        if not self.ready:
            return
        self.query_one(StatsPanel).update(self.app.stats_view())
        self.query_one(JobsTable).tick()
        self.show_workers()
        self.query_one(StatusBar).refresh()

    def show_page(self, jobs: list[dict]) -> None:
        if not self.ready:
            return
        table = self.query_one(JobsTable)
        table.set_sort(self.app.jobs_query.sort, self.app.jobs_query.descending)
        table.show_page(jobs)
        self.refresh_jobs_title()

    def update_jobs(self, jobs: dict[str, dict]) -> None:
        if not self.ready:
            return
        self.query_one(JobsTable).update_jobs(jobs)

    def show_workers(self) -> None:
        if not self.ready:
            return
        table = self.query_one(WorkersTable)
        table.unknown = self.app.conn.state == "down"
        table.redraw()
        self.query_one("#workers-panel").border_title = table.title

    def refresh_status(self) -> None:
        if not self.ready:
            return
        self.query_one(StatusBar).sync()
        stale = self.app.conn.state == "down"
        if stale != self.has_class("-stale"):
            self.set_class(stale, "-stale")
            self.show_workers()

    def refresh_jobs_title(self) -> None:
        """'Jobs · failed · 1–100 of 307 · by progress ▼ · 3 marked', from the page on screen: the
        range, the total and the rows always belong to the same answer of the broker."""
        if not self.ready:
            return
        q, total = self.app.shown_query, self.app.jobs_total
        table = self.query_one(JobsTable)
        title = f"Jobs · {q.state or 'all'}"
        if q.search:
            title += f" · “{q.search}”"
        title += f" · {page_range(q.offset, len(table.jobs), total)}"
        if (q.sort, q.descending) != ("created", True):
            title += f" · by {dict(JOB_SORTS)[q.sort]} {'▼' if q.descending else '▲'}"
        if table.marked:
            title += f" · {len(table.marked)} marked"
        panel = self.query_one("#jobs-panel")
        panel.border_title = title
        panel.border_subtitle = "⏎ open  ␣ mark  [ ] page  1-6 filter  o sort  ? keys" if roomy(self) else ""

    # ------------------------------------------------------------------ events

    @on(DataTable.RowSelected, "#jobs")
    def _open(self, event: DataTable.RowSelected) -> None:
        job = self.query_one(JobsTable).jobs.get(str(event.row_key.value))
        if job is not None:
            self.app.open_job(job)

    @on(DataTable.RowSelected, "#workers")
    def _open_worker(self, event: DataTable.RowSelected) -> None:
        name = str(event.row_key.value)
        if name in self.app.worker_book.workers:
            self.app.open_worker(name)

    @on(PageRequest)
    def _page_request(self, event: PageRequest) -> None:
        self.action_page(event.delta, land="top" if event.delta > 0 else "bottom")

    @on(SortRequest)
    def _sort_request(self, event: SortRequest) -> None:
        q = self.app.jobs_query
        descending = not q.descending if event.sort == q.sort else SORT_DESCENDING[event.sort]
        self.set_sort(event.sort, descending)

    @on(MarksChanged)
    def _marks_changed(self) -> None:
        self.refresh_jobs_title()

    @on(Input.Changed, "#search")
    def _search_changed(self, event: Input.Changed) -> None:
        if self._search_timer is not None:
            self._search_timer.stop()
        value = event.value.strip() or None
        self._search_timer = self.set_timer(0.3, lambda: self._apply_search(value))

    def _apply_search(self, value: str | None) -> None:
        if value != self.app.jobs_query.search:
            self.app.set_jobs_query(replace(self.app.jobs_query, search=value, offset=0))

    @on(Input.Submitted, "#search")
    def _search_done(self, event: Input.Submitted) -> None:
        self._apply_search(event.value.strip() or None)
        self.query_one(JobsTable).focus()

    # ------------------------------------------------------------------ actions

    def selected_job(self) -> dict | None:
        return self.query_one(JobsTable).selected_job

    def targets(self) -> list[dict]:
        """What c / r / d act on: the marked jobs, else the one under the cursor."""
        return self.query_one(JobsTable).targets()

    def action_search(self) -> None:
        box = self.query_one("#search", Input)
        box.display = True
        box.focus()

    def action_clear(self) -> None:
        box = self.query_one("#search", Input)
        if box.value:
            box.value = ""
            self._apply_search(None)
        box.display = False
        table = self.query_one(JobsTable)
        if table.marked:
            table.set_marks(set())
        table.focus()

    def action_filter(self, state: str | None) -> None:
        self.set_filter(state)

    def set_filter(self, state: str | None) -> None:
        self.app.set_jobs_query(replace(self.app.jobs_query, state=state, offset=0))

    def set_sort(self, sort: str, descending: bool) -> None:
        self.query_one(JobsTable).land = "top"
        self.app.set_jobs_query(replace(self.app.jobs_query, sort=sort, descending=descending, offset=0))

    def action_cycle_sort(self) -> None:
        keys = [k for k, _ in JOB_SORTS]
        nxt = keys[(keys.index(self.app.jobs_query.sort) + 1) % len(keys)]
        self.set_sort(nxt, SORT_DESCENDING[nxt])

    def action_reverse_sort(self) -> None:
        q = self.app.jobs_query
        self.set_sort(q.sort, not q.descending)

    def action_page(self, delta: int, land: str | None = None) -> None:
        q = self.app.jobs_query
        new = q.page(delta, self.app.jobs_total)
        if new != q:
            self.query_one(JobsTable).land = land or "top"
            self.app.set_jobs_query(new)

    def action_toggle_focus(self) -> None:
        jobs, workers = self.query_one(JobsTable), self.query_one(WorkersTable)
        (jobs if workers.has_focus else workers).focus()

    def action_cancel(self) -> None:
        self.app.cancel_jobs(self.targets())

    def action_retry(self) -> None:
        self.app.retry_jobs(self.targets())

    def action_delete(self) -> None:
        self.app.delete_jobs(self.targets())

    def action_purge(self) -> None:
        self.app.purge()

    def action_fetch(self) -> None:
        job = self.selected_job()
        if job is not None:
            self.app.fetch_job(job)

    def jobs_done(self, job_ids: list[str]) -> None:
        """Jobs were deleted: unmark them."""
        table = self.query_one(JobsTable)
        if table.marked & set(job_ids):
            table.set_marks(table.marked - set(job_ids))
