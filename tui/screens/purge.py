"""The purge dialog: which finished jobs to delete (by state and age); a confirmation follows."""

from __future__ import annotations

import re
from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from shared.states import TaskState
from tui import fmt

PURGE_STATES = (("every finished job", None), ("done", TaskState.DONE), ("failed", TaskState.FAILED),
                ("cancelled", TaskState.CANCELLED))  # (label, state)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> float | None:
    """'90s', '30m', '12h', '7d', '2w' or a bare number of hours -> seconds; '' -> None (any age)."""
    text = text.strip().lower().replace(" ", "")
    if not text:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw]?)", text)
    if not m:
        raise ValueError("age: a number with s, m, h, d or w (e.g. 7d), or blank for any age")
    return float(m.group(1)) * _UNITS[m.group(2) or "h"]


@dataclass(frozen=True)
class PurgeRequest:
    """Arguments for `Client.purge`."""

    state: str | None = None
    older_than_s: float | None = None

    def describe(self) -> str:
        what = f"every {self.state} job" if self.state else "every finished job (done, failed or cancelled)"
        if self.older_than_s:
            what += f" submitted more than {fmt.duration(self.older_than_s)} ago"
        return what


class PurgeScreen(ModalScreen[PurgeRequest | None]):
    """Dismisses with a PurgeRequest, or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self) -> None:
        super().__init__(classes="dialog-screen")

    def compose(self) -> ComposeResult:
        with Vertical(id="purge", classes="dialog"):
            yield Static("Delete finished jobs with their images and results. Queued and running jobs are never "
                         "purged.", classes="dialog-text")
            with Grid(id="purge-grid"):
                yield Label("Jobs")
                yield Select([(label, state or "") for label, state in PURGE_STATES], value="", allow_blank=False,
                             id="purge-state", compact=True)
                yield Label("Submitted")
                yield Input(placeholder="over 7d, 12h, 30m ago (blank: any time)", id="purge-age", compact=True)
            yield Static(id="purge-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Purge… (enter)", id="do-purge", variant="error", compact=True)
                yield Button("Cancel (esc)", id="do-cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#purge").border_title = "Purge finished jobs"
        self.query_one("#purge-state", Select).focus()

    def request(self) -> PurgeRequest:
        state = str(self.query_one("#purge-state", Select).value) or None
        return PurgeRequest(state=state, older_than_s=parse_age(self.query_one("#purge-age", Input).value))

    @on(Input.Submitted)
    def _enter(self) -> None:
        self._accept()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "do-purge":
            self._accept()
        else:
            self.dismiss(None)

    def _accept(self) -> None:
        try:
            req = self.request()
        except ValueError as e:
            self.query_one("#purge-error", Static).update(f"[bold #f7768e]{e}[/]")
            return
        self.dismiss(req)

    def action_cancel(self) -> None:
        self.dismiss(None)
