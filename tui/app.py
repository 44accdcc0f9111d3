"""The cutq dashboard app: wires the feed's Messages to the screens, and runs actions.

`run(endpoint)` is the entry point (`cutq tui`).  The app never talks to the broker
itself: live data comes from a `tui.feed.Feed` thread, and actions (submit, cancel,
retry, fetch, pause) run in worker threads, each on its own client connection.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen

from shared.client import CutqError
from shared.config import default_endpoint
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
from tui.model import JOB_FILTERS, JobsQuery, WorkerBook, merge_job
from tui.screens.confirm import ConfirmScreen
from tui.screens.job_detail import JobDetailScreen
from tui.screens.overview import OverviewScreen
from tui.screens.prompt import FolderPromptScreen
from tui.screens.submit import SubmitRequest, SubmitScreen
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


class CutqApp(App):
    """The dashboard.  `feed` supplies the data; `clock` is wall time (frozen in tests)."""

    CSS_PATH = Path(__file__).with_name("cutq.tcss")  # absolute: subclasses may live elsewhere
    TITLE = "cutq"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (36, "-tall")]
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("p", "pause", "Pause"),
        Binding("p", "resume", "Resume"),
        Binding("ctrl+r", "resync", "Reload", show=False),
    ]

    def __init__(self, feed: Feed, *, clock: Callable[[], float] = time.time, page_size: int = 100) -> None:
        super().__init__()
        self.feed = feed
        self.clock = clock
        self.conn = Connection(endpoint=feed.label)
        self.stats: dict[str, Any] = {}
        self.worker_book = WorkerBook()
        self.jobs_query = JobsQuery(limit=page_size)
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
        return next(s for s in self.screen_stack if isinstance(s, OverviewScreen))

    def detail_screens(self) -> list[JobDetailScreen]:
        return [s for s in self.screen_stack if isinstance(s, JobDetailScreen)]

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

    def _set_stats(self, stats: dict) -> None:
        self.stats = stats
        self.loaded.add("stats")
        paused = bool(stats.get("paused"))
        if paused != self.conn.paused:
            self.conn.paused = paused
            self.refresh_bindings()  # the footer's p: Pause <-> Resume
        self.conn.last_data = self.clock()
        self.overview.show_stats(stats)

    @_widgets_may_be_gone
    def on_workers_loaded(self, message: WorkersLoaded) -> None:
        self.worker_book.load(message.workers)
        self.loaded.add("workers")
        self.overview.show_workers()

    @_widgets_may_be_gone
    def on_jobs_page(self, message: JobsPage) -> None:
        if message.query != self.jobs_query:
            return  # the user has moved on; the page for the new query is coming
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
                self._set_stats(message.stats)
            overview = self.overview
            if self.worker_book.apply(message.events):
                overview.show_workers()
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
        if isinstance(self.screen, JobDetailScreen):
            self.pop_screen()
        self.push_screen(JobDetailScreen(job))

    # ------------------------------------------------------------------ actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "pause":
            return not self.stats.get("paused")
        if action == "resume":
            return bool(self.stats.get("paused"))
        return True

    def action_submit(self) -> None:
        models = sorted({m for w in self.worker_book.workers.values() for m in (w.get("models") or [])})
        processors = sorted({p for w in self.worker_book.workers.values() for p in (w.get("processors") or [])})

        def done(req: SubmitRequest | None) -> None:
            if req is not None:
                self._submit(req)

        self.push_screen(SubmitScreen(models=models, processors=processors), done)

    @work(thread=True, group="actions")
    def _submit(self, req: SubmitRequest) -> None:
        self._notify_from_thread(f"Uploading {', '.join(req.paths)[:60]}…", timeout=2)
        try:
            job_id = self.feed.call("submit_paths", req.paths, processor=req.processor, options=req.options,
                                    priority=req.priority)
        except CutqError as e:
            self._notify_from_thread(f"Submit failed: {e}", severity="error")
            return
        self._notify_from_thread(f"Submitted job {job_id}")

    def cancel_job(self, job: dict, task_ids: list[int] | None = None) -> None:
        jid = job["job_id"]
        if task_ids is not None and not task_ids:
            self.notify("None of the marked tasks is queued or running.", severity="warning")
            return
        what = f"{len(task_ids)} marked task{'s' * (len(task_ids) != 1)} of job {jid}" if task_ids \
            else f"every queued and running task of job {jid}"
        active = int(job.get("queued") or 0) + int(job.get("running") or 0)
        if task_ids is None and active == 0:
            self.notify(f"Job {jid} has nothing left to cancel.", severity="warning")
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._call("cancel", jid, task_ids, done=lambda r: f"Cancelled {r.get('cancelled', 0)} "
                                                                 f"task(s) of job {jid}")

        self.push_screen(ConfirmScreen("Cancel", f"Cancel {what}?\n\nRunning tasks are stopped and their work is "
                                                 f"lost. You can retry them later.", yes="Cancel tasks"), answer)

    def retry_job(self, job: dict, task_ids: list[int] | None = None) -> None:
        jid = job["job_id"]
        if task_ids is not None and not task_ids:
            self.notify("None of the marked tasks has failed or was cancelled.", severity="warning")
            return
        if task_ids is None and not int(job.get("failed") or 0) + int(job.get("cancelled") or 0):
            self.notify(f"Job {jid} has no failed or cancelled tasks to retry.", severity="warning")
            return
        self._call("retry", jid, task_ids, done=lambda r: f"Re-queued {r.get('requeued', 0)} task(s) of job {jid}")

    def fetch_job(self, job: dict) -> None:
        jid = job["job_id"]
        if not int(job.get("done") or 0):
            self.notify(f"Job {jid} has no finished results yet.", severity="warning")
            return

        def chosen(folder: str | None) -> None:
            if folder:
                self._call("fetch", jid, folder, done=lambda paths: f"Wrote {len(paths)} file(s) to {folder}")

        self.push_screen(FolderPromptScreen("Fetch results", f"Write the results of job {jid} to this folder:",
                                            default=f"./cutq-results/{jid}", ok="Fetch"), chosen)

    def action_pause(self) -> None:
        self._call("pause", True, done=lambda r: "Dispatch paused: running tasks finish, no new ones start")

    def action_resume(self) -> None:
        self._call("pause", False, done=lambda r: "Dispatch resumed")

    def action_resync(self) -> None:
        self.feed.resync()
        self.notify("Reloading from the broker…", timeout=2)

    @work(thread=True, group="actions")
    def _call(self, method: str, *args: Any, done: Callable[[Any], str]) -> None:
        """Run one client call off the UI thread and report the outcome as a toast."""
        try:
            result = self.feed.call(method, *args)
        except CutqError as e:
            self._notify_from_thread(f"{method} failed: {e}", severity="error")
            return
        self._notify_from_thread(done(result))

    def _notify_from_thread(self, text: str, severity: str = "information", timeout: float = 4) -> None:
        self.call_from_thread(self.notify, text, severity=severity, timeout=timeout)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ command palette

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Submit images", "Submit a file or a folder of images as a job (s)", self.action_submit)
        if self.stats.get("paused"):
            yield SystemCommand("Resume dispatch", "Let the broker hand out tasks again (p)", self.action_resume)
        else:
            yield SystemCommand("Pause dispatch", "Stop handing out new tasks; running ones finish (p)",
                                self.action_pause)
        yield SystemCommand("Reload", "Reload everything from the broker now (ctrl+r)", self.action_resync)
        if isinstance(screen, OverviewScreen):
            for state in JOB_FILTERS:
                label = state or "all"
                yield SystemCommand(f"Show {label} jobs", f"Filter the jobs table: {label}",
                                    lambda s=state: screen.set_filter(s))
            yield SystemCommand("Search jobs", "By job id prefix or file name (/)", screen.action_search)
            yield SystemCommand("Sort jobs", "Cycle the sort order of this page (o)", screen.action_cycle_sort)
            yield SystemCommand("Next page of jobs", "(])", lambda: screen.action_page(1))
            yield SystemCommand("Previous page of jobs", "([)", lambda: screen.action_page(-1))
            job = screen.selected_job()
            if job is not None:
                jid = job["job_id"]
                yield SystemCommand(f"Open job {jid}", "Tasks, errors and previews (enter)",
                                    lambda: self.open_job(job))
                yield SystemCommand(f"Cancel job {jid}", "Cancel its queued and running tasks (c)",
                                    lambda: self.cancel_job(job))
                yield SystemCommand(f"Retry job {jid}", "Re-queue its failed and cancelled tasks (r)",
                                    lambda: self.retry_job(job))
                yield SystemCommand(f"Fetch results of job {jid}", "Write its results to a folder (f)",
                                    lambda: self.fetch_job(job))
        if isinstance(screen, JobDetailScreen):
            yield SystemCommand("Back to the overview", "(esc)", screen.action_back)
            yield SystemCommand("Cancel tasks", "The marked tasks, or the whole job (c)", screen.action_cancel)
            yield SystemCommand("Retry tasks", "The marked tasks, or every failed one (r)", screen.action_retry)
            yield SystemCommand("Mark failed tasks", "Mark every failed task (a)", screen.action_mark_failed)
            yield SystemCommand("Filter tasks", "Cycle: all, failed, running, queued, done, cancelled (t)",
                                screen.action_cycle_filter)
            yield SystemCommand("Fetch results", "Write this job's results to a folder (f)", screen.action_fetch)
            yield SystemCommand("Toggle preview", "Show or hide the before/after preview (v)",
                                screen.action_toggle_preview)


def run(endpoint: str | None = None) -> None:
    """Run the dashboard against the broker at `endpoint` (default: $CUTQ_CONNECT or local)."""
    from tui.widgets.preview import detect_graphics

    detect_graphics()  # must query the terminal before Textual takes it over
    app = CutqApp(broker_feed(endpoint or default_endpoint()))
    app.run()
