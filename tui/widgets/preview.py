"""Before/after preview of one task: its input, and its cut-out on a checkerboard.

Images are drawn with `textual-image`: the terminal's graphics protocol (Kitty TGP or
Sixel) where it has one, coloured half-block characters everywhere else.  The protocol
must be detected before Textual takes over the terminal: call `detect_graphics()`
first (`tui.app.run` does).
"""

from __future__ import annotations

import io
import logging
from typing import Any

from PIL import Image as PILImage
from PIL import ImageOps
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Static

from shared.states import TaskState
from tui import fmt

log = logging.getLogger(__name__)

BACKGROUND = (26, 27, 38)  # letterbox colour, the panel's background
CHECK_LIGHT = (204, 204, 204)
CHECK_DARK = (153, 153, 153)
MAX_PIXELS = (960, 960)

_graphics: str | None = None


def detect_graphics(force: str | None = None) -> str:
    """Pick the image renderer once: "tgp", "sixel" or "halfcell" (the fallback).

    Queries the terminal, so it must run before the app starts; without a terminal
    (tests, pipes) the answer is "halfcell".
    """
    global _graphics
    if force is not None:
        _graphics = force
        return force
    if _graphics is None:
        try:
            # Both imports query the terminal (graphics support, cell size in pixels):
            # after Textual starts, its input thread would swallow the answers.
            from textual_image import renderable, widget  # noqa: F401

            name = renderable.Image.__module__.rsplit(".", 1)[-1]
            _graphics = name if name in ("tgp", "sixel") else "halfcell"
        except Exception as e:  # no terminal, odd terminal: half blocks work everywhere
            log.info("terminal graphics detection failed (%s); using half blocks", e)
            _graphics = "halfcell"
    return _graphics


def image_widget_class() -> type[Widget]:
    mode = detect_graphics()
    from textual_image import widget as tiw

    return {"tgp": tiw.TGPImage, "sixel": tiw.SixelImage}.get(mode, tiw.HalfcellImage)


def cell_pixels() -> tuple[int, int]:
    """The pixel size of one terminal cell (a VT340's 10x20 when unknown)."""
    try:
        from textual_image._terminal import get_cell_size

        size = get_cell_size()
        return max(1, size.width), max(1, size.height)
    except Exception:
        return 10, 20


def checkerboard(size: tuple[int, int], cell: int = 8) -> PILImage.Image:
    """A grey checkerboard, the usual backdrop for transparency."""
    w, h = size
    tile = PILImage.new("RGB", (cell * 2, cell * 2), CHECK_LIGHT)
    tile.paste(CHECK_DARK, (cell, 0, cell * 2, cell))
    tile.paste(CHECK_DARK, (0, cell, cell, cell * 2))
    board = PILImage.new("RGB", (w, h))
    for y in range(0, h, cell * 2):
        for x in range(0, w, cell * 2):
            board.paste(tile, (x, y))
    return board


def decode(data: bytes) -> PILImage.Image:
    """Bytes to a small RGBA image (thumbnailed, EXIF-rotated); raises on garbage."""
    img = PILImage.open(io.BytesIO(data))
    img.draft("RGB", MAX_PIXELS)  # fast JPEG downscale while decoding
    img = ImageOps.exif_transpose(img)
    img.thumbnail(MAX_PIXELS)
    return img.convert("RGBA")


def fit(img: PILImage.Image, cells: tuple[int, int], checker: bool) -> PILImage.Image:
    """`img` scaled into a box of `cells` terminal cells, on a checkerboard where it is
    transparent, letterboxed so the box's aspect is exact (the widget then stretches it
    to the box without distortion)."""
    cw, ch = cell_pixels()
    box_w, box_h = max(1, cells[0] * cw), max(1, cells[1] * ch)
    scale = min(box_w / img.width, box_h / img.height)
    w, h = max(1, int(img.width * scale)), max(1, int(img.height * scale))
    shown = img.resize((w, h), PILImage.Resampling.LANCZOS)
    if checker or shown.mode == "RGBA":
        board = checkerboard((w, h), cell=max(4, min(w, h) // 12)).convert("RGBA")
        board.alpha_composite(shown.convert("RGBA"))
        shown = board
    out = PILImage.new("RGB", (box_w, box_h), BACKGROUND)
    out.paste(shown.convert("RGB"), ((box_w - w) // 2, (box_h - h) // 2))
    return out


class ImageSlot(Vertical):
    """A titled box that shows one image, re-fitted when the box changes size."""

    def __init__(self, title: str, checker: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.border_title = title
        self.checker = checker
        self.source: PILImage.Image | None = None
        self._note = Static(classes="slot-note")
        self._image: Widget | None = None
        self._fitted_for: tuple[int, int] | None = None

    def compose(self) -> ComposeResult:
        yield self._note

    def show(self, img: PILImage.Image | None, note: str = "") -> None:
        self.source = img
        self._fitted_for = None
        self._note.update(Text(note, style="dim", justify="center"))
        self._note.display = img is None
        self._refit()

    def on_resize(self) -> None:
        self._refit()

    def _refit(self) -> None:
        size = (self.content_size.width, self.content_size.height)
        if self.source is None or size[0] <= 0 or size[1] <= 0:
            if self._image is not None:
                self._image.display = False
            return
        if size == self._fitted_for and self._image is not None and self._image.display:
            return
        self._fitted_for = size
        fitted = fit(self.source, size, self.checker)
        if self._image is None:
            self._image = image_widget_class()(fitted, classes="slot-image")
            self.mount(self._image)
        else:
            self._image.image = fitted  # type: ignore[attr-defined]
        self._image.display = True


class TaskPreview(Vertical):
    """Input and result side by side, with the task's name, state and error below."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.border_title = "Preview"
        self.task_id: int | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="preview-images"):
            yield ImageSlot("before", checker=False, id="preview-before")
            yield ImageSlot("after", checker=True, id="preview-after")
        yield Static(id="preview-info")

    def clear(self, note: str = "select a task") -> None:
        self.task_id = None
        self.border_title = "Preview"
        self.query_one("#preview-before", ImageSlot).show(None, note)
        self.query_one("#preview-after", ImageSlot).show(None, "")
        self.query_one("#preview-info", Static).update("")

    def loading(self, task: dict) -> None:
        self.task_id = task["task_id"]
        self.border_title = f"Preview · {task.get('name', '')}"
        self.query_one("#preview-before", ImageSlot).show(None, "loading…")
        self.query_one("#preview-after", ImageSlot).show(None, "")
        self.set_info(task)

    def show(self, task: dict, before: PILImage.Image | None, after: PILImage.Image | None,
             before_note: str = "", after_note: str = "") -> None:
        if task["task_id"] != self.task_id:
            return  # a newer selection is loading
        self.query_one("#preview-before", ImageSlot).show(before, before_note)
        self.query_one("#preview-after", ImageSlot).show(after, after_note)
        self.set_info(task)

    def set_info(self, task: dict) -> None:
        info = Text.assemble(fmt.state_text(task.get("state") or TaskState.QUEUED), "  ",
                             (str(task.get("name") or ""), "bold"))
        if task.get("input_size"):
            info.append(f"  {fmt.size(task['input_size'])}", style="dim")
        if task.get("error"):
            info.append("\n")
            info.append(str(task["error"]), style="#f7768e")
        self.query_one("#preview-info", Static).update(info)
