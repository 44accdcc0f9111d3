"""The task rows of one job: state, attempts, worker, timings and error text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from shared.states import TaskState
from tui import fmt
from tui.widgets.jobs_table import PageRequest

COLUMNS = (
    ("mark", " "), ("name", "File"), ("state", "State"), ("attempts", "Try"), ("duration", "Time"),
    ("worker", "Worker"), ("started", "Started"), ("size", "Size"), ("error", "Error"),
)


def task_cells(task: dict, marked: bool, now: float, progress: dict | None = None,
               names: Callable[[Any], str] = lambda ref: str(ref or "–")) -> tuple:
    state = task.get("state") or TaskState.QUEUED
    label = fmt.state_text(state)
    if state == TaskState.RUNNING and progress and progress.get("stage"):
        frac = progress.get("fraction") or 0.0
        label.append(f" {progress['stage']}" + (f" {frac:.0%}" if frac else ""), style="dim")
    error = str(task.get("error") or "").replace("\n", " ")
    return (
        Text("●" if marked else " ", style="bold #7aa2f7"),
        Text(str(task.get("name") or task.get("task_id")), overflow="ellipsis", no_wrap=True),
        label,
        Text(str(task.get("attempts") or 0), justify="right"),
        Text(fmt.duration(fmt.task_duration(task, now)), justify="right"),
        names(task.get("worker")),
        fmt.clock(task.get("started"), now),
        Text(fmt.size(task.get("input_size")), justify="right"),
        Text(error[:200] or "", style="#f7768e"),
    )


class TasksTable(DataTable):
    """One page of a job's tasks (key: task id); `marked` tasks are the target of cancel/retry.

    A job may have thousands of tasks: the screen shows them a page at a time, and
    moving past the last (first) row asks for the next (previous) page."""

    def __init__(self, clock: Callable[[], float], names: Callable[[Any], str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, cursor_foreground_priority="renderable", **kwargs)
        self.clock = clock
        self.names = names or (lambda ref: str(ref or "–"))
        self.tasks: dict[int, dict] = {}
        self.marked: set[int] = set()
        self.progress: dict[int, dict] = {}
        self._cells: dict[int, tuple] = {}
        self.shown: list[int] = []
        self.land: str | None = None

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key, width=24 if key == "name" else None)

    def show(self, tasks: dict[int, dict], ids: list[int]) -> None:
        """Show the rows `ids` of `tasks` (all of the job's tasks, by id)."""
        keep = None if self.land else self.selected_task
        self.tasks = tasks
        self.shown = ids
        self.marked &= set(tasks)
        self.clear()
        now = self.clock()
        self._cells = {}
        for tid in ids:
            cells = task_cells(tasks[tid], tid in self.marked, now, self.progress.get(tid), self.names)
            self._cells[tid] = cells
            self.add_row(*cells, key=str(tid))
        if keep is not None and keep["task_id"] in self._cells:
            self.move_cursor(row=self.get_row_index(str(keep["task_id"])), animate=False)
        elif self.land and self.row_count:
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

    @property
    def selected_task(self) -> dict | None:
        if not self.tasks or self.row_count == 0:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:
            return None
        return self.tasks.get(int(str(key.value)))

    def update_tasks(self, ids: set[int] | list[int]) -> None:
        now = self.clock()
        keys = [k for k, _ in COLUMNS]
        for tid in ids:
            task = self.tasks.get(tid)
            if task is None or tid not in self._cells:
                continue
            new = task_cells(task, tid in self.marked, now, self.progress.get(tid), self.names)
            old = self._cells.get(tid)
            if new == old:
                continue
            self._cells[tid] = new
            for i, key in enumerate(keys):
                if old is None or old[i] != new[i]:
                    self.update_cell(str(tid), key, new[i])

    def tick(self) -> None:
        self.update_tasks([tid for tid in self.shown if self.tasks[tid].get("state") == TaskState.RUNNING])

    def toggle_mark(self) -> None:
        task = self.selected_task
        if task is None:
            return
        self.marked ^= {task["task_id"]}
        self.update_tasks([task["task_id"]])
        if self.cursor_row < self.row_count - 1:
            self.move_cursor(row=self.cursor_row + 1)

    def mark(self, ids: list[int]) -> None:
        self.marked = set(ids)
        self.update_tasks(self.shown)
