"""One worker (Enter on the workers table): where it runs, what it has loaded, what it runs
now (job and file), what it finished lately, and its throughput over the last hour.

The broker's worker record names the tasks a worker holds, not their files: the screen asks
for the running tasks of their jobs every few seconds (the jobs are known from the event
stream).  Recent tasks and the hour's chart come from the events this dashboard has seen
since it started.  There is no key to drain a worker: the protocol has no message for it
(a worker drains itself on SIGTERM, and then shows as draining here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Static

from shared.client import CutqError
from shared.states import TaskState
from tui import fmt
from tui.widgets.keybar import KeyBar
from tui.widgets.sparkline import Sparkline
from tui.widgets.status_bar import StatusBar

if TYPE_CHECKING:
    from tui.app import CutqApp

POLL_S = 2.0
TASK_COLUMNS = (("task", "Task", 4), ("state", "State", 11), ("job", "Job", 8), ("file", "File", 0),
                ("time", "Time", 8))
NAMES_KEPT = 2000  # file names of tasks seen running, for the recent list


def info_lines(w: dict, now: float, unknown: bool) -> Table:
    """Three lines: state, host, pid, uptime, beat; slots and counts; models and processors."""
    state = "unknown" if unknown else str(w.get("state") or "alive")
    grid = Table.grid(expand=True)
    grid.add_column(no_wrap=True, overflow="ellipsis")
    joined = w.get("joined")
    line1 = Text.assemble(fmt.state_text(state), ("  host ", "dim"), str(w.get("host") or "–"),
                          ("  pid ", "dim"), str(w.get("pid") or "–"),
                          ("  up ", "dim"), fmt.duration(now - joined) if joined else "–",
                          ("  beat ", "dim"), fmt.duration(w.get("last_seen_age")) if not unknown else "–")
    busy, slots = int(w.get("busy") or 0), int(w.get("slots") or 0)
    line2 = Text.assemble(("slots ", "dim"), (f"{busy}/{slots} busy", "bold"),
                          ("  threads ", "dim"), str(w.get("threads") or "–"),
                          ("  done ", "dim"), (fmt.count(w.get("done") or 0), fmt.STATE_STYLE[TaskState.DONE]),
                          ("  failed ", "dim"), (fmt.count(w.get("failed") or 0),
                                                 fmt.STATE_STYLE[TaskState.FAILED] if w.get("failed") else "dim"),
                          ("  now ", "dim"), (f"{fmt.rate(w.get('tasks_per_s') or 0.0)} tasks/s", "bold #7dcfff"))
    providers = ", ".join(p.replace("ExecutionProvider", "") for p in w.get("providers") or [])
    line3 = Text.assemble(("models ", "dim"), ", ".join(w.get("models") or []) or "none loaded",
                          (f" ({providers})" if providers else "", "dim"),
                          ("  processors ", "dim"), " ".join(w.get("processors") or []) or "–")
    for line in (line1, line2, line3):
        grid.add_row(line)
    return grid


class WorkerTasks(DataTable):
    """Running tasks first, then recent outcomes; Enter opens the task's job."""

    BINDINGS = [Binding("enter", "select_cursor", "Open job", key_display="⏎",
                        tooltip="Open the job of the selected task")]


class WorkerDetailScreen(Screen):
    """Follows one worker by name; Enter on a task opens its job."""

    app: CutqApp

    BINDINGS = [
        Binding("escape", "back", "Back", key_display="esc"),
        Binding("h", "app.chart_span", "Chart span", show=False, tooltip="Overview chart: last 2 min / last hour"),
        Binding("d", "drain", "Drain/resume", tooltip="Admin: this worker takes no new tasks (again: takes them)"),
    ]

    def __init__(self, name: str) -> None:
        super().__init__(id="worker")
        self.worker_name = name
        self.running: dict[int, dict[str, Any]] = {}  # task id -> its row from the broker (name, job, started)
        self._jobs: dict[str, str | None] = {}  # table row key -> job id
        self.names: dict[int, str] = {}  # task id -> file name, from every poll (recent tasks keep theirs)
        self._file_width: tuple[int, int] = (0, 0)
        self.ready = False

    @property
    def worker(self) -> dict:
        return self.app.worker_book.workers.get(self.worker_name) or {"name": self.worker_name, "state": "left"}

    def compose(self) -> ComposeResult:
        bar = StatusBar(self.app.conn, self.app.clock)
        bar.crumb = f"worker {self.worker_name}"
        yield bar
        yield Static(id="worker-info", classes="panel")
        with Vertical(id="worker-chart", classes="panel"):
            yield Sparkline(id="worker-spark")
        with Vertical(id="worker-tasks-panel", classes="panel"):
            yield WorkerTasks(id="worker-tasks", cursor_type="row", zebra_stripes=True,
                              cursor_foreground_priority="renderable")
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one("#worker-tasks", DataTable).focus()
        self.query_one("#worker-info").border_title = f"Worker {self.worker_name}"
        self.ready = True
        self.show()
        self._poll()
        self.set_interval(POLL_S, self._poll)

    # ------------------------------------------------------------------ data

    def _poll(self) -> None:
        w = self.worker
        if self.app.conn.state != "connected" or w.get("id") in (None, "*"):
            return
        book = self.app.worker_book
        jobs = [book.task_job[t] for t in w.get("tasks") or [] if t in book.task_job]
        known = len(jobs) == len(w.get("tasks") or [])
        self._fetch(str(w["id"]), sorted(set(jobs)) if known else [])

    @work(thread=True, exclusive=True, group="worker-tasks")
    def _fetch(self, worker_id: str, job_ids: list[str]) -> None:
        if not job_ids and not self.worker.get("tasks"):
            rows: list[dict] = []
        else:
            try:
                rows = self.app.feed.call("worker_tasks", worker_id, job_ids)
            except CutqError:
                return  # the status bar says why; the next poll tries again
        self.app.call_from_thread(self._fetched, rows)

    def _fetched(self, rows: list[dict]) -> None:
        self.running = {int(t["task_id"]): t for t in rows}
        self.names.update((tid, str(t.get("name") or "")) for tid, t in self.running.items())
        while len(self.names) > NAMES_KEPT:
            del self.names[next(iter(self.names))]
        self.show()

    def on_resize(self) -> None:
        self.show()

    def _columns(self, table: DataTable, id_width: int) -> None:
        """The file name gets what the other columns leave (they are fixed, the task id as wide as
        the longest), so the time column stays on screen at 60 columns."""
        widths = {key: w for key, _, w in TASK_COLUMNS} | {"task": max(4, id_width)}
        others = sum(w or 0 for k, w in widths.items() if k != "file")
        width = max(8, table.size.width - others - 2 * len(TASK_COLUMNS) - 1)
        if (width, widths["task"]) == self._file_width and table.columns:
            return
        self._file_width = (width, widths["task"])
        table.clear(columns=True)
        for key, label, _ in TASK_COLUMNS:
            table.add_column(label, key=key, width=width if key == "file" else widths[key])

    # ------------------------------------------------------------------ drawing

    def show(self) -> None:
        if not self.ready:
            return
        w, now = self.worker, self.app.clock()
        unknown = self.app.conn.state == "down"
        self.query_one("#worker-info", Static).update(info_lines(w, now, unknown))
        minutes = self.app.worker_book.minutes(self.worker_name, now, self.app.started_at)
        spark = self.query_one(Sparkline)
        spark.data = tuple(minutes)
        chart = self.query_one("#worker-chart")
        chart.border_title = "tasks/s · last hour, per minute"
        chart.border_subtitle = f"peak {fmt.rate(max(minutes, default=0.0))}/s · seen by this dashboard"
        self._show_tasks(w, now)

    def _show_tasks(self, w: dict, now: float) -> None:
        table = self.query_one("#worker-tasks", DataTable)
        recent = list(reversed(self.app.worker_book.recent.get(self.worker_name, ())))
        ids = [*(w.get("tasks") or []), *(ev.get("task_id") for ev in recent)]
        self._columns(table, max((len(str(t)) for t in ids), default=4))
        rows = []
        for tid in w.get("tasks") or []:
            t = self.running.get(tid, {})
            job = t.get("job_id") or self.app.worker_book.task_job.get(tid) or ""
            started = t.get("started")
            rows.append((str(tid), Text(str(tid)), fmt.state_text(TaskState.RUNNING), Text(fmt.short_id(job) or "…"),
                         Text(str(t.get("name") or self.names.get(tid) or "…"), overflow="ellipsis", no_wrap=True),
                         Text(fmt.duration(now - started) if started else "–", justify="right"), job))
        for ev in recent:
            tid = ev.get("task_id")
            name = self.names.get(tid) or ""
            rows.append((f"r{tid}-{ev.get('t')}", Text(str(tid)), fmt.state_text(str(ev.get("state"))),
                         Text(fmt.short_id(str(ev.get("job_id") or ""))),
                         Text(str(name or ev.get("error") or ""), overflow="ellipsis", no_wrap=True,
                              style="#f7768e" if ev.get("error") and not name else ""),
                         Text(fmt.clock(ev.get("t"), now), justify="right"), ev.get("job_id")))
        keep = table.cursor_row
        table.clear()
        self._jobs = {}
        for key, *cells, job in rows:
            table.add_row(*cells, key=key)
            self._jobs[key] = job
        if table.row_count:
            table.move_cursor(row=min(keep, table.row_count - 1), animate=False)
        running, recent = len(w.get("tasks") or []), len(self.app.worker_book.recent.get(self.worker_name, ()))
        panel = self.query_one("#worker-tasks-panel")
        panel.border_title = f"Tasks · {running} running · {recent} recent"

    def refresh_status(self) -> None:
        if not self.ready:
            return
        self.query_one(StatusBar).sync()
        self.set_class(self.app.conn.state == "down", "-stale")
        self.show()

    # ------------------------------------------------------------------ actions

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_drain(self) -> None:
        """Toggle: drain the worker (no new tasks; running ones go on), or give it tasks again."""
        if not self.app.connected_or_say("drain"):
            return
        drain = not self.worker.get("held")
        name = self.worker_name
        self.app._call("drain_worker", name, drain,
                       done=lambda r: f"worker {name} " + ("takes no new tasks" if drain else "takes tasks again"))

    @on(DataTable.RowSelected, "#worker-tasks")
    def _selected(self) -> None:
        self.action_open_job()

    def action_open_job(self) -> None:
        table = self.query_one("#worker-tasks", DataTable)
        if not table.row_count:
            return
        key = str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        job_id = self._jobs.get(key)
        if not job_id:
            self.notify("The job of this task is not known yet.", severity="warning")
            return
        self.app.open_job({"job_id": job_id})
