"""The cutq dashboard app: wires the feed's Messages to the screens.

`run(endpoint)` is the entry point (`cutq tui`).  The app never talks to the broker
itself: live data comes from a `tui.feed.Feed` thread, and actions (submit, cancel,
retry, delete, purge, fetch, pause: `tui.actions`) run in worker threads, each on its
own client connection.  Every panel is redrawn from the same batch of the feed, so the
numbers on screen always belong to one moment of the broker.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen

from shared.config import default_endpoint
from tui.actions import Actions
from tui.commands import commands
from tui.feed import Feed, broker_feed
from tui.messages import (
    Connected,
    Disconnected,
    FeedBatch,
    JobDetail,
    JobMissing,
    JobsPage,
    StatsUpdated,
    WorkersLoaded,
)
from tui.model import COUNT_KEYS, LIVE, JobsQuery, Throughput, WorkerBook, merge_job
from tui.screens.help import HelpScreen
from tui.screens.job_detail import JobDetailScreen
from tui.screens.overview import OverviewScreen
from tui.screens.worker_detail import WorkerDetailScreen
from tui.widgets.status_bar import Connection

log = logging.getLogger(__name__)


def _widgets_may_be_gone(handler: Callable[..., None]) -> Callable[..., None]:
    """Feed messages keep arriving while the app shuts down and its widgets are removed;
    an update for a widget that is gone is dropped, not an error."""

    @functools.wraps(handler)
    def wrapper(self: CutqApp, *args: Any) -> None:
        try:
            handler(self, *args)
        except NoMatches as e:
            log.debug("dropped an update for a removed widget: %s", e)

    return wrapper


class CutqApp(Actions, App):
    """The dashboard.  `feed` supplies the data; `clock` is wall time (frozen in tests)."""

    CSS_PATH = Path(__file__).with_name("cutq.tcss")  # absolute: subclasses may live elsewhere
    TITLE = "cutq"
    HORIZONTAL_BREAKPOINTS = [(0, "-slim"), (70, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-tiny"), (24, "-short"), (36, "-tall")]
    BINDINGS = [
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
        Binding("p", "pause", "Pause", tooltip="Pause dispatch: running tasks finish, no new ones start"),
        Binding("p", "resume", "Resume", tooltip="Resume dispatch"),
        Binding("ctrl+r", "resync", "Reload", show=False, tooltip="Reload everything from the broker now"),
    ]

    def __init__(self, feed: Feed, *, clock: Callable[[], float] = time.time, page_size: int = 100) -> None:
        super().__init__()
        self.feed = feed
        self.clock = clock
        self.conn = Connection(endpoint=feed.label)
        self.stats: dict[str, Any] = {}
        self.counts_delta: dict[str, int] = {}  # job events since the last stats (see Coalescer)
        self.throughput = Throughput()  # tasks/s kept by this client: an hour, across broker restarts
        self.chart_span = "2m"  # the overview chart: "2m" (per second) or "1h" (per minute)
        self._chart_cache: tuple[tuple, tuple[list[float], str]] | None = None
        self.worker_book = WorkerBook()
        self._capacity: tuple[int, int] | None = None
        self.started_at = clock()  # what this client saw starts here (its charts are blank before)
        self.jobs_query = JobsQuery(limit=page_size)  # what the user asked for
        self.shown_query = self.jobs_query  # what the page on screen answers
        self.jobs_total = 0
        self.jobs_page: list[dict] = []
        self.batch_ms: deque[float] = deque(maxlen=100_000)  # time to apply each FeedBatch (bench)
        self.events_seen = 0
        self.loaded: set[str] = set()  # which snapshots have arrived: stats, workers, jobs

    # ------------------------------------------------------------------ lifecycle

    def get_default_screen(self) -> Screen:
        return OverviewScreen()

    def on_mount(self) -> None:
        self.theme = "tokyo-night"
        self.feed.query_jobs(self.jobs_query)
        self.feed.start(self.post_message)
        self.set_interval(1.0, self._tick)

    def on_unmount(self) -> None:
        self.feed.stop()

    @property
    def overview(self) -> OverviewScreen:
        """The overview screen; NoMatches once shutdown has popped it (feed updates then drop)."""
        for screen in self.screen_stack:
            if isinstance(screen, OverviewScreen):
                return screen
        raise NoMatches("the overview screen is gone (the app is shutting down)")

    def detail_screens(self) -> list[JobDetailScreen]:
        return [s for s in self.screen_stack if isinstance(s, JobDetailScreen)]

    def worker_screens(self) -> list[WorkerDetailScreen]:
        return [s for s in self.screen_stack if isinstance(s, WorkerDetailScreen)]

    def stats_view(self) -> dict[str, Any]:
        """The stats as the overview shows them: counts moved on by the job events since the broker's
        last stats, workers and slots from the workers table, and the chart the user chose."""
        view = dict(self.stats)
        for key in COUNT_KEYS:
            if key in view or key in self.counts_delta:
                view[key] = max(0, int(view.get(key) or 0) + self.counts_delta.get(key, 0))
        if "queued" in view:
            view["queue_depth"] = view["queued"]
        if self.worker_book.workers:
            live = [w for w in self.worker_book.workers.values() if w.get("state") in LIVE]
            busy, slots = self.worker_book.capacity()
            view.update(slots_used=busy, slots_total=slots, workers_total=sum(int(w.get("count") or 1) for w in live),
                        workers_busy=sum(1 for w in live if int(w.get("busy") or 0)))
        view["chart"], view["chart_label"] = self._chart()
        return view

    def _chart(self) -> tuple[list[float], str]:
        """The overview chart, computed again only when a second passed or stats came."""
        key = (self.chart_span, int(self.clock()), id(self.stats))
        if self._chart_cache is None or self._chart_cache[0] != key:
            now = self.clock()
            if self.chart_span == "1h":
                chart = (self.throughput.minutes(now), "last hour, per minute")
            else:
                chart = (self.throughput.seconds(now), "last 2m, per second")
            self._chart_cache = (key, chart)
        return self._chart_cache[1]

    @_widgets_may_be_gone
    def _tick(self) -> None:
        if self.conn.state == "connected":
            for detail in self.detail_screens():
                detail.tick()
        for screen in self.screen_stack:
            if hasattr(screen, "refresh_status"):
                screen.refresh_status()

    # ------------------------------------------------------------------ feed messages

    def on_connected(self, message: Connected) -> None:
        reconnected = self.conn.state == "down"
        self.conn.state, self.conn.error, self.conn.retry_at, self.conn.since = "connected", "", None, None
        self.conn.last_data = self.clock()
        self._status_changed()
        if reconnected:
            self.notify(f"Reconnected to {message.endpoint}", timeout=3)

    def on_disconnected(self, message: Disconnected) -> None:
        first = self.conn.state != "down"
        self.conn.state, self.conn.error = "down", message.error
        self.conn.retry_at = self.clock() + message.retry_in
        self.conn.since = message.since
        self._status_changed()
        if first and "connected" in self.loaded:
            self.notify(f"Lost the broker: {message.error}. Showing the last data; reconnecting…",
                        severity="warning", timeout=5)

    @_widgets_may_be_gone
    def _status_changed(self) -> None:
        if self.conn.state == "connected":
            self.loaded.add("connected")
        for screen in self.screen_stack:
            if hasattr(screen, "refresh_status"):
                screen.refresh_status()

    @_widgets_may_be_gone
    def on_stats_updated(self, message: StatsUpdated) -> None:
        self._set_stats(message.stats)

    def _set_stats(self, stats: dict, delta: dict[str, int] | None = None) -> None:
        self.stats = stats
        self.counts_delta = dict(delta or {})
        self.throughput.merge(stats.get("history"), float(stats.get("t") or self.clock()))
        self.loaded.add("stats")
        paused = bool(stats.get("paused"))
        if paused != self.conn.paused:
            self.conn.paused = paused
            self.refresh_bindings()  # the footer's p: Pause <-> Resume
        self.conn.last_data = self.clock()
        self.overview.show_stats()

    @_widgets_may_be_gone
    def on_workers_loaded(self, message: WorkersLoaded) -> None:
        self.worker_book.load(message.workers)
        self.loaded.add("workers")
        self._workers_changed()

    def _workers_changed(self) -> None:
        self.overview.show_workers()
        capacity = self.worker_book.capacity()
        if capacity != self._capacity:  # the overview's workers and slots come from the same table
            self._capacity = capacity
            self.overview.query_one("#stats").update(self.stats_view())  # type: ignore[attr-defined]
        for screen in self.worker_screens():
            screen.show()

    @_widgets_may_be_gone
    def on_jobs_page(self, message: JobsPage) -> None:
        if message.query != self.jobs_query:
            return  # the user has moved on; the page for the new query is coming
        clamped = message.query.clamped(message.total)
        if clamped != message.query:  # jobs went (deleted, purged): the page is past the end now
            self.set_jobs_query(clamped)
            return
        self.shown_query = message.query
        self.jobs_total = message.total
        self.jobs_page = message.jobs
        self.loaded.add("jobs")
        self.overview.show_page(message.jobs)

    @_widgets_may_be_gone
    def on_job_detail(self, message: JobDetail) -> None:
        for detail in self.detail_screens():
            detail.show_detail(message.status)

    @_widgets_may_be_gone
    def on_job_missing(self, message: JobMissing) -> None:
        for detail in self.detail_screens():
            if detail.job_id == message.job_id:
                detail.missing(message.error)

    @_widgets_may_be_gone
    def on_feed_batch(self, message: FeedBatch) -> None:
        started = time.perf_counter()
        try:
            self.events_seen += message.received
            self.conn.last_data = self.clock()
            if message.stats is not None:
                self._set_stats(message.stats, message.counts_delta)
            elif message.counts_delta != self.counts_delta:
                self.counts_delta = dict(message.counts_delta)
                self.overview.query_one("#stats").update(self.stats_view())  # type: ignore[attr-defined]
            overview = self.overview
            if self.worker_book.apply(message.events):
                self._workers_changed()
            if message.jobs and overview.ready:
                table_jobs = overview.query_one("#jobs").jobs  # type: ignore[attr-defined]
                merged = {jid: merge_job(table_jobs[jid], ev) for jid, ev in message.jobs.items() if jid in table_jobs}
                if merged:
                    overview.update_jobs(merged)
            for detail in self.detail_screens():
                detail.apply(message.jobs, message.events)
        finally:
            self.feed.ack()
            self.batch_ms.append((time.perf_counter() - started) * 1000)

    # ------------------------------------------------------------------ navigation

    def set_jobs_query(self, query: JobsQuery) -> None:
        self.jobs_query = query
        self.feed.query_jobs(query)
        self.overview.refresh_jobs_title()

    def open_job(self, job: dict) -> None:
        while isinstance(self.screen, (JobDetailScreen, WorkerDetailScreen)):
            self.pop_screen()
        self.push_screen(JobDetailScreen(job))

    def open_worker(self, name: str) -> None:
        while isinstance(self.screen, (JobDetailScreen, WorkerDetailScreen)):
            self.pop_screen()
        self.push_screen(WorkerDetailScreen(name))

    def jobs_deleted(self, job_ids: list[str]) -> None:
        """After a delete or purge: reload the page (the broker sends no event for a deleted job)
        and leave the detail of a job that is gone."""
        self.overview.jobs_done(job_ids)
        self.feed.query_jobs(self.jobs_query)
        for detail in self.detail_screens():
            if detail.job_id in job_ids and detail is self.screen:
                self.pop_screen()

    # ------------------------------------------------------------------ app-wide actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "pause":
            return not self.stats.get("paused")
        if action == "resume":
            return bool(self.stats.get("paused"))
        return True

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        title = {"overview": "overview", "detail": "job", "worker": "worker",
                 "large-preview": "large preview"}.get(self.screen.id or "", "this screen")
        self.push_screen(HelpScreen(self.screen, title))

    def action_chart_span(self) -> None:
        self.chart_span = "1h" if self.chart_span == "2m" else "2m"
        self.overview.refresh_all()

    def action_resync(self) -> None:
        self.feed.resync()
        self.notify("Reloading from the broker…", timeout=2)

    # ------------------------------------------------------------------ command palette

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield from commands(self, screen)


def run(endpoint: str | None = None) -> None:
    """Run the dashboard against the broker at `endpoint` (default: $CUTQ_CONNECT or local)."""
    from tui.widgets.preview import detect_graphics

    detect_graphics()  # must query the terminal before Textual takes it over
    quiet_logs()
    app = CutqApp(broker_feed(endpoint or default_endpoint()))
    app.run()


def quiet_logs() -> None:
    """Nothing reaches the terminal through logging: not over the screen while the app runs, nor
    into the shell after it quits (the feed thread may still be ending its last request).  Log
    handlers that write to the terminal are taken off; those writing to files stay."""
    import sys

    root = logging.getLogger()
    for handler in list(root.handlers):
        stream = getattr(handler, "stream", None)
        if isinstance(handler, logging.StreamHandler) and stream in (sys.stderr, sys.stdout, sys.__stderr__,
                                                                     sys.__stdout__):
            root.removeHandler(handler)
    root.addHandler(logging.NullHandler())  # so logging's last resort (stderr) never fires
