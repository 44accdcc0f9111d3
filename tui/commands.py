"""The command palette (^p): every key of the current screen as a command, found by any word of
what it does, plus the choices a key only cycles through (each sort, each worker)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING

from textual.app import SystemCommand
from textual.screen import Screen

from tui.model import JOB_SORTS

if TYPE_CHECKING:
    from tui.app import CutqApp

# Textual's own bindings that the palette already offers (or that make no sense there)
_SKIP = {"command_palette", "app.command_palette", "help_quit", "app.help_quit", "focus_next", "focus_previous"}


def binding_commands(app: CutqApp, screen: Screen) -> Iterable[SystemCommand]:
    """One command per action bound on `screen` (its focused widget, the screen, the app)."""
    seen: set[str] = set()
    for node, binding, enabled, _tooltip in screen.active_bindings.values():
        if not enabled or binding.action in _SKIP or binding.action in seen or not binding.description:
            continue
        if binding.action.startswith("cursor_") or binding.action.startswith("scroll_"):
            continue  # moving the cursor is not a command
        seen.add(binding.action)
        title = binding.tooltip or binding.description
        yield SystemCommand(title, f"key {app.get_key_display(binding)}",
                            functools.partial(app.run_action, binding.action, node))


def overview_commands(app: CutqApp, screen: Screen) -> Iterable[SystemCommand]:
    from tui.screens.overview import OverviewScreen

    if not isinstance(screen, OverviewScreen):
        return
    for key, name in JOB_SORTS:
        for descending in (True, False):
            arrow = "▼" if descending else "▲"
            yield SystemCommand(f"Sort jobs by {name} {arrow}", "Every job, on the broker (o: next column, "
                                                                "O: reverse; or click a header)",
                                functools.partial(screen.set_sort, key, descending))
    jobs = screen.targets()
    if len(jobs) == 1 and int(jobs[0].get("cancelled") or 0):
        job = jobs[0]
        yield SystemCommand(f"Retry failed and cancelled tasks of job {job['job_id']}", "Re-queue both",
                            functools.partial(app.retry_job, job))
    for name in app.worker_book.workers:
        yield SystemCommand(f"Worker {name}: details", "Host, models, slots, current and recent tasks, throughput",
                            functools.partial(app.open_worker, name))


def commands(app: CutqApp, screen: Screen) -> Iterable[SystemCommand]:
    yield from binding_commands(app, screen)
    yield from overview_commands(app, screen)
