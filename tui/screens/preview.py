"""The large preview (z on a task): before and after filling the terminal, or one of them alone.

At 80x24 the side preview has room for an image of about a dozen half-block pixels; here
the same image gets the whole screen.  Up and down step through the job's tasks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Static

from shared.states import TaskState
from tui import fmt
from tui.widgets.keybar import KeyBar
from tui.widgets.preview import ImageSlot

if TYPE_CHECKING:
    from tui.app import CutqApp
    from tui.screens.job_detail import JobDetailScreen

MODES = ("both", "after", "before")


class PreviewScreen(Screen):
    """Follows the selected task of `detail` (its loader and cache do the fetching)."""

    app: CutqApp

    BINDINGS = [
        Binding("escape,z", "back", "Back", key_display="esc"),
        Binding("b", "cycle_mode", "Before/after", tooltip="Show both images, the result alone or the input alone"),
        Binding("down,j", "step(1)", "Next task", key_display="↓"),
        Binding("up,k", "step(-1)", "Previous task", key_display="↑"),
    ]

    def __init__(self, detail: JobDetailScreen, task: dict) -> None:
        super().__init__(id="large-preview")
        self.detail = detail
        self.task_row = dict(task)
        self.mode = "both"

    def compose(self) -> ComposeResult:
        yield Static(id="large-title")
        with Horizontal(id="large-images"):
            yield ImageSlot("before", checker=False, id="large-before")
            yield ImageSlot("after", checker=True, id="large-after")
        yield Static(id="large-info")
        yield KeyBar()

    def on_mount(self) -> None:
        self._load(self.task_row)

    def _load(self, task: dict) -> None:
        self.task_row = dict(task)
        self._info(task)
        result = self.detail.preview_for(task)
        if result is None:
            self.query_one("#large-before", ImageSlot).show(None, "loading…")
            self.query_one("#large-after", ImageSlot).show(None, "")
        else:
            self.show(task, result)

    def show(self, task: dict, result: tuple) -> None:
        """The images of `task` arrived (from the detail screen's loader)."""
        if task["task_id"] != self.task_row["task_id"]:
            return
        before, after, before_note, after_note = result
        self.query_one("#large-before", ImageSlot).show(before, before_note)
        self.query_one("#large-after", ImageSlot).show(after, after_note)
        self._info(task)

    def _info(self, task: dict) -> None:
        title = Text.assemble((" cutq ", "bold reverse"), " ", (f"job {self.detail.job_id}", "bold"), "  ",
                              (str(task.get("name") or task.get("task_id")), "bold #7dcfff"))
        self.query_one("#large-title", Static).update(title)
        info = Text.assemble(fmt.state_text(task.get("state") or TaskState.QUEUED))
        if task.get("input_size"):
            info.append(f"  {fmt.size(task['input_size'])}", style="dim")
        if task.get("error"):
            info.append(f"  {task['error']}", style="#f7768e")
        self.query_one("#large-info", Static).update(info)
        self.query_one("#large-before").display = self.mode in ("both", "before")
        self.query_one("#large-after").display = self.mode in ("both", "after")

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_cycle_mode(self) -> None:
        self.mode = MODES[(MODES.index(self.mode) + 1) % len(MODES)]
        self._info(self.task_row)

    def action_step(self, delta: int) -> None:
        task = self.detail.move_task(delta)
        if task is not None and task["task_id"] != self.task_row["task_id"]:
            self._load(task)
