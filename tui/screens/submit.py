"""The submit dialog: a file or folder (with completion), processor, model and options."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from shared.config import DEFAULT_MODEL, OUTPUT_FORMATS
from shared.options import KNOWN_MODELS, PROCESSORS
from tui.screens.paths import PathSuggester, count_images


@dataclass
class SubmitRequest:
    """What the dialog returns: arguments for `Client.submit_paths`."""

    paths: list[str]
    processor: str = "rembg"
    options: dict[str, Any] = field(default_factory=dict)
    priority: int = 0


def parse_color(text: str) -> list[int] | None:
    """'#ff8800', '#ff880080', '255,136,0' or '255,136,0,128' -> [r, g, b, a]; '' -> None."""
    text = text.strip()
    if not text or text.lower() in ("none", "transparent"):
        return None
    if text.startswith("#"):
        h = text[1:]
        if len(h) not in (6, 8) or any(c not in "0123456789abcdefABCDEF" for c in h):
            raise ValueError("colour must be #rrggbb or #rrggbbaa")
        parts = [int(h[i:i + 2], 16) for i in range(0, len(h), 2)]
    else:
        try:
            parts = [int(p) for p in text.replace(" ", "").split(",")]
        except ValueError as e:
            raise ValueError("colour must be #rrggbb or r,g,b[,a]") from e
        if len(parts) not in (3, 4) or not all(0 <= p <= 255 for p in parts):
            raise ValueError("colour must be r,g,b[,a] with 0-255 each")
    return parts + [255] * (4 - len(parts))


def split_paths(text: str) -> list[str]:
    """One or more paths; quote names with spaces.  '~' is expanded."""
    try:
        parts = shlex.split(text)
    except ValueError:
        parts = [text]
    return [os.path.expanduser(p) for p in parts if p.strip()]


# what goes in "more options" for each processor (the form has fields for rembg's usual ones)
OPTION_HINTS = {
    "rembg": '{"alpha_matting_erode_size": 15}',
    "noop": "none: the input comes back unchanged",
    "sleep": '{"seconds": 30}',
}


class Check(Checkbox):
    """A checkbox that reads as one: ✔ when on, an empty box when off (Textual's compact
    style draws a dim X either way, so an unchecked box looked checked)."""

    @property
    def _button(self) -> Content:
        button_style = self.get_visual_style("toggle--button")
        return Content.assemble(("[", "dim"), ("✔" if self.value else " ", button_style), ("]", "dim"))


class PathInput(Input):
    """An Input whose Tab accepts the path completion (and moves on when there is none)."""

    BINDINGS = [Binding("tab", "complete", "Complete path", show=False)]

    def action_complete(self) -> None:
        if self._suggestion and self._suggestion != self.value:
            self.value = self._suggestion
            self.cursor_position = len(self.value)
        else:
            self.screen.focus_next()


class SubmitScreen(ModalScreen[SubmitRequest | None]):
    """Dismisses with a SubmitRequest, or None when cancelled."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "submit", "Submit"),
    ]

    def __init__(self, models: list[str] | None = None, processors: list[str] | None = None,
                 path: str = "") -> None:
        super().__init__(classes="dialog-screen")
        loaded = [m for m in (models or []) if m]
        self.loaded = set(loaded)  # marked ✓: some worker has these in memory
        self.models = list(dict.fromkeys([*loaded, DEFAULT_MODEL, *KNOWN_MODELS]))
        self.default_model = DEFAULT_MODEL if DEFAULT_MODEL in loaded or not loaded else loaded[0]
        self.processors = list(dict.fromkeys([*PROCESSORS, *(processors or [])]))
        self.initial_path = path

    def compose(self) -> ComposeResult:
        with Vertical(id="submit", classes="dialog"):
            yield Label("File or folder  [dim](Tab completes; several: quote and separate by spaces)[/]")
            yield PathInput(self.initial_path, placeholder="~/photos/", id="path", suggester=PathSuggester(),
                            compact=True)
            yield Static(id="path-info")
            with Grid(id="submit-grid"):
                yield Label("Processor")
                yield Select([(p, p) for p in self.processors], value="rembg", allow_blank=False, id="processor",
                             compact=True)
                yield Label("Model")
                yield Select([(f"{m} ✓" if m in self.loaded else m, m) for m in self.models],
                             value=self.default_model,
                             allow_blank=False, id="model", compact=True)
                yield Label("Format")
                yield Select([(f, f) for f in OUTPUT_FORMATS], value=OUTPUT_FORMATS[0], allow_blank=False,
                             id="format", compact=True)
                yield Label("Background")
                yield Input(placeholder="none, or #ffffff", id="bgcolor", compact=True)
                yield Label("Priority")
                yield Input("0", type="integer", id="priority", compact=True)
                yield Label("More options")
                yield Input(placeholder=OPTION_HINTS["rembg"], id="extra", compact=True)
            with Horizontal(id="submit-checks"):
                yield Check("alpha matting", id="alpha_matting", compact=True)
                yield Check("only mask", id="only_mask", compact=True)
                yield Check("post-process mask", id="post_process_mask", compact=True)
            yield Static(id="submit-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Submit (ctrl+s)", id="do-submit", variant="primary", compact=True)
                yield Button("Cancel (esc)", id="do-cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#submit").border_title = "Submit images"
        self.query_one("#path", Input).focus()
        self._update_path_info(self.initial_path)

    @on(Input.Changed, "#path")
    def _path_changed(self, event: Input.Changed) -> None:
        self._update_path_info(event.value)

    def _update_path_info(self, value: str) -> None:
        paths = split_paths(value)
        if len(paths) > 1:
            counts = [count_images(p)[0] for p in paths]
            text = f"{sum(counts)} images in {len(paths)} paths"
        else:
            n, text = count_images(paths[0] if paths else "")
        self.query_one("#path-info", Static).update(f"[dim]{text}[/]")

    @on(Select.Changed, "#processor")
    def _processor_changed(self, event: Select.Changed) -> None:
        rembg = event.value == "rembg"
        for wid in ("#model", "#format", "#bgcolor", "#alpha_matting", "#only_mask", "#post_process_mask"):
            self.query_one(wid).disabled = not rembg
        extra = self.query_one("#extra", Input)
        extra.placeholder = OPTION_HINTS.get(str(event.value), "a JSON object")
        extra.disabled = event.value == "noop"

    @on(Input.Submitted)
    def _enter(self) -> None:
        self.action_submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "do-submit":
            self.action_submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def request(self) -> SubmitRequest:
        """The form as a SubmitRequest; raises ValueError with a message for the user."""
        paths = split_paths(self.query_one("#path", Input).value)
        if not paths:
            raise ValueError("type a file or folder to submit")
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise ValueError(f"no such file or folder: {missing[0]}")
        processor = str(self.query_one("#processor", Select).value)
        options: dict[str, Any] = {}
        if processor == "rembg":
            options = {
                "model": str(self.query_one("#model", Select).value),
                "format": str(self.query_one("#format", Select).value),
                "alpha_matting": self.query_one("#alpha_matting", Checkbox).value,
                "only_mask": self.query_one("#only_mask", Checkbox).value,
                "post_process_mask": self.query_one("#post_process_mask", Checkbox).value,
                "bgcolor": parse_color(self.query_one("#bgcolor", Input).value),
            }
        extra = self.query_one("#extra", Input).value.strip()
        if extra:
            try:
                more = json.loads(extra)
            except json.JSONDecodeError as e:
                raise ValueError(f"more options: not JSON ({e.msg})") from e
            if not isinstance(more, dict):
                raise ValueError("more options: must be a JSON object")
            options.update(more)
        try:
            priority = int(self.query_one("#priority", Input).value or 0)
        except ValueError as e:
            raise ValueError("priority must be a whole number") from e
        return SubmitRequest(paths=paths, processor=processor, options=options, priority=priority)

    def action_submit(self) -> None:
        try:
            req = self.request()
        except ValueError as e:
            self.query_one("#submit-error", Static).update(f"[bold #f7768e]{e}[/]")
            return
        self.dismiss(req)
