"""One job: a summary, its tasks live, and a before/after preview of the selected task."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Static
from textual.worker import get_current_worker

from shared.client import CutqError
from shared.states import ACTIVE, TERMINAL, TaskState
from tui.model import TaskBook, merge_job, page_range
from tui.screens.overview import filter_bindings
from tui.screens.preview import PreviewScreen
from tui.widgets.job_summary import summary
from tui.widgets.jobs_table import PageRequest
from tui.widgets.keybar import KeyBar
from tui.widgets.preview import TaskPreview, decode
from tui.widgets.stats_panel import roomy
from tui.widgets.status_bar import StatusBar
from tui.widgets.tasks_table import TasksTable

if TYPE_CHECKING:
    from tui.app import CutqApp

PREVIEW_CACHE = 24
TASK_PAGE = 500  # rows in the tasks table at once; a job may have 10,000 tasks


class JobDetailScreen(Screen):
    """Follows one job (the feed watches it while this screen is open)."""

    app: CutqApp

    BINDINGS = [
        Binding("escape", "back", "Back", key_display="esc"),
        Binding("z", "zoom", "Zoom", tooltip="Large preview: the task's before and after, full screen"),
        Binding("c", "cancel", "Cancel", tooltip="Cancel the marked tasks, or every queued and running one"),
        Binding("r", "retry", "Retry", tooltip="Retry the marked tasks, or every failed one"),
        Binding("space", "mark", "Mark", key_display="␣", tooltip="Mark the task (cancel or retry the marked ones)"),
        *filter_bindings("filter", "tasks"),
        Binding("a", "mark_failed", "Mark failed", show=False, tooltip="Mark every failed task"),
        Binding("v", "toggle_preview", "Preview", show=False, tooltip="Show or hide the side preview"),
        Binding("f", "fetch", "Fetch", show=False, tooltip="Fetch results: write this job's results to a folder"),
        Binding("d", "delete", "Delete job", show=False, tooltip="Delete this job with its images and results"),
        Binding("R", "retry_all", "Retry failed and cancelled", key_display="R", show=False,
                tooltip="Retry every failed and cancelled task of this job"),
        Binding("right_square_bracket", "page(1)", "Next page", show=False),
        Binding("left_square_bracket", "page(-1)", "Previous page", show=False),
    ]

    def __init__(self, job: dict) -> None:
        super().__init__(id="detail")
        self.job = dict(job)
        self.book: TaskBook | None = None
        self.task_filter: str | None = None
        self.task_offset = 0
        self._preview_timer: Timer | None = None
        self._cache: OrderedDict[tuple, tuple] = OrderedDict()
        self.preview_choice: bool | None = None  # v: shown / hidden; None: as the size allows
        self.ready = False  # feed messages can arrive before the widgets exist

    @property
    def job_id(self) -> str:
        return self.job["job_id"]

    def compose(self) -> ComposeResult:
        bar = StatusBar(self.app.conn, self.app.clock)
        bar.crumb = f"job {self.job_id}"
        yield bar
        yield Static(id="job-summary", classes="panel")
        with Horizontal(id="detail-body"):
            yield TasksTable(self.app.clock, self.app.worker_book.display_name, id="tasks", classes="panel")
            yield TaskPreview(id="preview", classes="panel")
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one("#job-summary").border_title = f"Job {self.job_id}"
        self.query_one("#tasks").border_title = "Tasks · loading…"
        self.query_one(TaskPreview).clear()
        self.query_one(TasksTable).focus()
        self.ready = True
        self.show_summary()
        self.app.feed.watch_job(self.job_id)

    def on_unmount(self) -> None:
        self.app.feed.watch_job(None)

    def on_resize(self) -> None:
        self._fit_preview()
        self.show_summary()
        if self.book is not None:
            self._tasks_title()

    def _fit_preview(self) -> None:
        """Below 24 rows the side preview would leave the tasks a row or two: hidden (v shows it,
        z opens the large one)."""
        preview = self.query_one(TaskPreview)
        show = self.preview_choice if self.preview_choice is not None else self.size.height >= 24
        if preview.display != show:
            preview.display = show
            if show:
                self._schedule_preview()

    # ------------------------------------------------------------------ fed by the app

    def show_detail(self, status: dict) -> None:
        if not self.ready:
            return
        if status.get("job_id") != self.job_id:
            return
        self.book = TaskBook(status)
        self.job = dict(self.book.job)
        self.show_tasks()
        self.show_summary()
        if self.query_one(TasksTable).selected_task is not None:
            self._schedule_preview()

    def _filtered(self) -> list[int]:
        assert self.book is not None
        return self.book.ids(None if self.task_filter is None else {self.task_filter})

    def show_tasks(self) -> None:
        """Put the current page of (filtered) tasks in the table."""
        if self.book is None:
            return
        ids = self._filtered()
        self.task_offset = min(self.task_offset, max(0, (len(ids) - 1) // TASK_PAGE * TASK_PAGE))
        self.query_one(TasksTable).show(self.book.tasks, ids[self.task_offset:self.task_offset + TASK_PAGE])
        self._tasks_title()

    def missing(self, error: str) -> None:
        if not self.ready:
            return
        self.query_one("#tasks").border_title = f"Tasks · {error}"

    def apply(self, jobs: dict[str, dict], events: list[dict]) -> None:
        if not self.ready:
            return
        if self.job_id in jobs:
            self.job = merge_job(self.job, jobs[self.job_id])
            if self.book is not None:
                self.book.job = merge_job(self.book.job, jobs[self.job_id])
            self.show_summary()
        if self.book is None:
            return
        table = self.query_one(TasksTable)
        mine = [e for e in events if e.get("job_id") == self.job_id]
        for e in mine:
            if e.get("kind") == "progress":
                table.progress[e["task_id"]] = e
        changed = self.book.apply(mine)
        for tid in changed:
            if self.book.tasks[tid].get("state") != TaskState.RUNNING:
                table.progress.pop(tid, None)
        changed |= {e["task_id"] for e in mine if e.get("kind") == "progress" and e["task_id"] in self.book.tasks}
        if changed:
            table.update_tasks(changed)
            self._tasks_title()
            selected = table.selected_task
            if selected is not None and selected["task_id"] in changed:
                self.query_one(TaskPreview).set_info(selected)
                if selected.get("state") == TaskState.DONE:
                    self._schedule_preview()

    def tick(self) -> None:
        if not self.ready:
            return
        self.query_one(TasksTable).tick()
        if self.job.get("state") not in TERMINAL:
            self.show_summary()
        self.query_one(StatusBar).refresh()

    def refresh_status(self) -> None:
        if not self.ready:
            return
        self.query_one(StatusBar).sync()
        self.set_class(self.app.conn.state == "down", "-stale")

    def show_summary(self) -> None:
        if not self.ready:
            return
        self.query_one("#job-summary", Static).update(summary(self.job, self.app.clock(), roomy(self)),
                                                     layout=False)  # fixed height

    def _tasks_title(self) -> None:
        table = self.query_one(TasksTable)
        total = len(self._filtered()) if self.book is not None else 0
        title = f"Tasks · {self.task_filter or 'all'}"
        if total > TASK_PAGE:
            title += f" · {page_range(self.task_offset, len(table.shown), total)}"
        else:
            title += f" · {total:,}"
        if table.marked:
            title += f" · {len(table.marked)} marked"
        panel = self.query_one("#tasks")
        panel.border_title = title
        panel.border_subtitle = "␣ mark  a mark failed  1-6 filter  [ ] page  z large" if roomy(self) else ""

    # ------------------------------------------------------------------ preview

    @on(DataTable.RowHighlighted, "#tasks")
    def _highlighted(self) -> None:
        self._schedule_preview()

    def _schedule_preview(self) -> None:
        if self._preview_timer is not None:
            self._preview_timer.stop()
        self._preview_timer = self.set_timer(0.2, self._start_preview)

    def _start_preview(self) -> None:
        task = self.query_one(TasksTable).selected_task
        preview = self.query_one(TaskPreview)
        if task is None or not (preview.display or isinstance(self.app.screen, PreviewScreen)):
            return
        key = (task["task_id"], task.get("state"))
        if key in self._cache:
            self._cache.move_to_end(key)
            preview.task_id = task["task_id"]
            preview.show(task, *self._cache[key])
            return
        preview.loading(task)
        self._load_preview(dict(task))

    @work(thread=True, exclusive=True, group="preview")
    def _load_preview(self, task: dict) -> None:
        """Fetch the input (and the result, when done) and decode them off the UI thread."""
        worker = get_current_worker()
        before = after = None
        before_note = after_note = ""
        if self.app.conn.state != "connected":  # asking would wait out the action timeout
            self.app.call_from_thread(self._preview_unavailable, task)
            return
        try:
            _, data = self.app.feed.call("fetch_result", task["task_id"], what="input")
            before = decode(data)
        except CutqError as e:
            before_note = f"input unavailable: {e}"
        except Exception as e:  # PIL cannot read it: that is what the preview shows
            before_note = f"cannot decode input: {e.__class__.__name__}"
        state = task.get("state")
        if state == TaskState.DONE:
            try:
                _, data = self.app.feed.call("fetch_result", task["task_id"], what="result")
                after = decode(data)
            except CutqError as e:
                after_note = f"result unavailable: {e}"
            except Exception as e:
                after_note = f"cannot decode result: {e.__class__.__name__}"
        else:
            notes: dict[str, str] = {TaskState.QUEUED: "waiting for a worker", TaskState.RUNNING: "cutting out…",
                                     TaskState.FAILED: "failed: no result", TaskState.CANCELLED: "cancelled"}
            after_note = notes.get(state or "", "")
        if worker.is_cancelled:
            return
        result = (before, after, before_note, after_note)
        self.app.call_from_thread(self._preview_ready, task, result)

    def _preview_unavailable(self, task: dict) -> None:
        """Not cached: the images wait for the broker (shown, not cached, so they load once it is back)."""
        self._show_preview(task, (None, None, "broker unreachable: no image", ""))

    def _preview_ready(self, task: dict, result: tuple) -> None:
        self._cache[(task["task_id"], task.get("state"))] = result
        while len(self._cache) > PREVIEW_CACHE:
            self._cache.popitem(last=False)
        self._show_preview(task, result)

    def _show_preview(self, task: dict, result: tuple) -> None:
        """Show `task`'s images here and on this job's full-screen previews, if it is still the selected one."""
        current = self.query_one(TasksTable).selected_task
        if current is not None and current["task_id"] == task["task_id"]:
            self.query_one(TaskPreview).show(current, *result)
            for screen in self.app.screen_stack:
                if isinstance(screen, PreviewScreen) and screen.detail is self:
                    screen.show(current, result)

    def preview_for(self, task: dict) -> tuple | None:
        """The decoded images of `task` if loaded; else starts loading them (None meanwhile)."""
        key = (task["task_id"], task.get("state"))
        if key in self._cache:
            return self._cache[key]
        self._load_preview(dict(task))
        return None

    def move_task(self, delta: int) -> dict | None:
        """Move the cursor `delta` rows (the large preview's up/down) and return the task there."""
        table = self.query_one(TasksTable)
        if table.row_count:
            table.move_cursor(row=max(0, min(table.row_count - 1, table.cursor_row + delta)), animate=False)
        return table.selected_task

    # ------------------------------------------------------------------ actions

    def _targets(self, states: frozenset[str]) -> list[int] | None:
        """Marked tasks in `states`, or None (= the whole job) when nothing is marked."""
        table = self.query_one(TasksTable)
        if not table.marked:
            return None
        return sorted(t for t in table.marked if table.tasks.get(t, {}).get("state") in states)

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_cancel(self) -> None:
        self.app.cancel_job(self.job, self._targets(ACTIVE))

    def action_retry(self) -> None:
        targets = self._targets(frozenset({TaskState.FAILED, TaskState.CANCELLED}))
        self.app.retry_job(self.job, targets, failed_only=targets is None)

    def action_retry_all(self) -> None:
        self.app.retry_job(self.job)

    def action_fetch(self) -> None:
        self.app.fetch_job(self.job)

    def action_delete(self) -> None:
        self.app.delete_jobs([self.job])

    def action_zoom(self) -> None:
        task = self.query_one(TasksTable).selected_task
        if task is None:
            self.notify("No task selected.", severity="warning")
            return
        self.app.push_screen(PreviewScreen(self, task))

    @on(DataTable.RowSelected, "#tasks")
    def _task_selected(self) -> None:
        self.action_zoom()

    def action_mark(self) -> None:
        self.query_one(TasksTable).toggle_mark()
        self._tasks_title()

    def action_mark_failed(self) -> None:
        table = self.query_one(TasksTable)
        table.mark([tid for tid, t in table.tasks.items() if t.get("state") == TaskState.FAILED])
        self._tasks_title()

    @on(PageRequest)
    def _page_request(self, event: PageRequest) -> None:
        event.stop()
        self.action_page(event.delta, land="top" if event.delta > 0 else "bottom")

    def action_page(self, delta: int, land: str = "top") -> None:
        if self.book is None:
            return
        total = len(self._filtered())
        offset = min(max(0, self.task_offset + delta * TASK_PAGE), max(0, (total - 1) // TASK_PAGE * TASK_PAGE))
        if offset != self.task_offset:
            self.task_offset = offset
            self.query_one(TasksTable).land = land
            self.show_tasks()

    def action_filter(self, state: str | None) -> None:
        self.task_filter = state
        self.task_offset = 0
        self.query_one(TasksTable).land = "top"
        self.show_tasks()

    def action_toggle_preview(self) -> None:
        self.preview_choice = not self.query_one(TaskPreview).display
        self._fit_preview()
