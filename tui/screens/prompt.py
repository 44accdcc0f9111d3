"""A one-field dialog asking for a folder (where to fetch results to)."""

from __future__ import annotations

import os

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

from tui.screens.paths import PathSuggester
from tui.screens.submit import PathInput


class FolderPromptScreen(ModalScreen[str | None]):
    """Dismisses with the folder typed (~ expanded), or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, label: str, default: str = "", ok: str = "OK") -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.label = label
        self.default = default
        self.ok = ok

    def compose(self) -> ComposeResult:
        with Vertical(id="prompt", classes="dialog"):
            yield Label(self.label)
            yield PathInput(self.default, id="folder", suggester=PathSuggester(dirs_only=True), compact=True)
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.ok} (enter)", id="ok", variant="primary", compact=True)
                yield Button("Cancel (esc)", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#prompt").border_title = self.title_text
        self.query_one("#folder", Input).focus()

    def on_input_submitted(self) -> None:
        self._accept()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self._accept()
        else:
            self.dismiss(None)

    def _accept(self) -> None:
        value = self.query_one("#folder", Input).value.strip()
        self.dismiss(os.path.expanduser(value) if value else None)

    def action_cancel(self) -> None:
        self.dismiss(None)
