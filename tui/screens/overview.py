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
from textual.widgets import DataTable, Footer, Input

from tui import fmt
from tui.model import JOB_FILTERS
from tui.widgets.jobs_table import SORTS, JobsTable, PageRequest
from tui.widgets.stats_panel import StatsPanel, roomy
from tui.widgets.status_bar import StatusBar
from tui.widgets.workers_panel import WorkersTable

if TYPE_CHECKING:
    from tui.app import CutqApp


class OverviewScreen(Screen):
    """Everything at a glance; Enter opens a job."""

    app: CutqApp

    BINDINGS = [
        Binding("s", "app.submit", "Submit"),
        Binding("c", "cancel", "Cancel"),
        Binding("r", "retry", "Retry"),
        Binding("f", "fetch", "Fetch"),
        Binding("slash", "search", "Search"),
        Binding("t", "cycle_filter", "Filter"),
        Binding("o", "cycle_sort", "Sort", show=False),
        Binding("right_square_bracket", "page(1)", "Next page", show=False),
        Binding("left_square_bracket", "page(-1)", "Previous page", show=False),
        Binding("escape", "clear_search", "Clear search", show=False),
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
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#search").display = False
        self.query_one(JobsTable).focus()
        self.ready = True
        self.query_one(JobsTable).show_page(self.app.jobs_page)
        self.refresh_all()

    def on_resize(self) -> None:
        self.query_one(JobsTable).set_wide(self.size.width >= 120)
        self.query_one(StatsPanel).update(self.app.stats)

    # ------------------------------------------------------------------ fed by the app

    def refresh_all(self) -> None:
        if not self.ready:
            return
        self.query_one(StatsPanel).update(self.app.stats)
        self.show_workers()
        self.refresh_jobs_title()
        self.query_one(StatusBar).refresh()

    def show_stats(self, stats: dict) -> None:
        if not self.ready:
            return
        self.query_one(StatsPanel).update(stats)
        self.query_one(JobsTable).tick()
        self.show_workers()
        self.query_one(StatusBar).refresh()

    def show_page(self, jobs: list[dict]) -> None:
        if not self.ready:
            return
        self.query_one(JobsTable).show_page(jobs)
        self.refresh_jobs_title()

    def update_jobs(self, jobs: dict[str, dict]) -> None:
        if not self.ready:
            return
        self.query_one(JobsTable).update_jobs(jobs)

    def show_workers(self) -> None:
        if not self.ready:
            return
        table = self.query_one(WorkersTable)
        table.redraw()
        self.query_one("#workers-panel").border_title = table.title

    def refresh_status(self) -> None:
        if not self.ready:
            return
        self.query_one(StatusBar).sync()
        self.set_class(self.app.conn.state == "down", "-stale")

    def refresh_jobs_title(self) -> None:
        if not self.ready:
            return
        q, total = self.app.jobs_query, self.app.jobs_total
        table = self.query_one(JobsTable)
        shown = len(table.jobs)
        title = f"Jobs · {q.state or 'all'}"
        if q.search:
            title += f" · “{q.search}”"
        title += f" · {fmt.count(q.offset + 1) if shown else 0}–{fmt.count(q.offset + shown)} of {fmt.count(total)}"
        if table.sort_by:
            title += f" · by {dict(SORTS)[table.sort_by]}"
        panel = self.query_one("#jobs-panel")
        panel.border_title = title
        panel.border_subtitle = "⏎ open  [ ] page  / search  t filter  o sort" if roomy(self) else ""

    # ------------------------------------------------------------------ events

    @on(DataTable.RowSelected, "#jobs")
    def _open(self, event: DataTable.RowSelected) -> None:
        job = self.query_one(JobsTable).jobs.get(str(event.row_key.value))
        if job is not None:
            self.app.open_job(job)

    @on(PageRequest)
    def _page_request(self, event: PageRequest) -> None:
        self.action_page(event.delta, land="top" if event.delta > 0 else "bottom")

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

    def action_search(self) -> None:
        box = self.query_one("#search", Input)
        box.display = True
        box.focus()

    def action_clear_search(self) -> None:
        box = self.query_one("#search", Input)
        if box.value:
            box.value = ""
            self._apply_search(None)
        box.display = False
        self.query_one(JobsTable).focus()

    def action_cycle_filter(self) -> None:
        i = JOB_FILTERS.index(self.app.jobs_query.state)
        self.set_filter(JOB_FILTERS[(i + 1) % len(JOB_FILTERS)])

    def set_filter(self, state: str | None) -> None:
        self.app.set_jobs_query(replace(self.app.jobs_query, state=state, offset=0))
        self.refresh_jobs_title()

    def action_cycle_sort(self) -> None:
        table = self.query_one(JobsTable)
        keys = [k for k, _ in SORTS]
        table.resort(keys[(keys.index(table.sort_by) + 1) % len(keys)])
        self.refresh_jobs_title()

    def action_page(self, delta: int, land: str | None = None) -> None:
        q = self.app.jobs_query
        new = q.page(delta, self.app.jobs_total)
        if new != q:
            self.query_one(JobsTable).land = land or "top"
            self.app.set_jobs_query(new)

    def action_cancel(self) -> None:
        job = self.selected_job()
        if job is not None:
            self.app.cancel_job(job)

    def action_retry(self) -> None:
        job = self.selected_job()
        if job is not None:
            self.app.retry_job(job)

    def action_fetch(self) -> None:
        job = self.selected_job()
        if job is not None:
            self.app.fetch_job(job)
