"""A throughput sparkline with a zero baseline, one or more rows tall."""

from __future__ import annotations

from collections.abc import Sequence

from rich.segment import Segment
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

BARS = " ▁▂▃▄▅▆▇█"


def bar_columns(data: Sequence[float], width: int) -> list[float]:
    """Resample `data` (oldest first) to `width` columns, right-aligned: the newest value
    is the last column; with fewer points than columns the left stays empty (-1)."""
    if width <= 0:
        return []
    n = len(data)
    if n == 0:
        return [-1.0] * width
    if n <= width:
        return [-1.0] * (width - n) + [float(v) for v in data]
    out = []
    for i in range(width):  # each column is the mean of its slice of the data
        lo, hi = i * n // width, (i + 1) * n // width
        chunk = data[lo:hi] or data[lo:lo + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def bar_rows(columns: list[float], height: int, peak: float) -> list[str]:
    """Rows of block characters, top row first, scaled so `peak` fills the height.

    A zero column is a baseline `▁`; a missing one (-1) is blank; any positive value
    shows at least a sliver.
    """
    levels = height * 8
    rows = [[" "] * len(columns) for _ in range(height)]
    for x, v in enumerate(columns):
        if v < 0:
            continue
        filled = 0 if peak <= 0 else round(min(v, peak) / peak * levels)
        filled = max(filled, 1)
        for r in range(height):
            part = max(0, min(8, filled - (height - 1 - r) * 8))
            rows[r][x] = BARS[part]
    return ["".join(row) for row in rows]


class Sparkline(Widget):
    """Tasks per second over the last minutes: bars on a zero baseline."""

    DEFAULT_CSS = """
    Sparkline { height: 1; }
    """
    COMPONENT_CLASSES = {"sparkline--bar", "sparkline--zero"}

    data: reactive[tuple[float, ...]] = reactive(tuple, layout=False)

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        cols = bar_columns(self.data, width)
        peak = max((c for c in cols if c > 0), default=0.0)
        row = bar_rows(cols, height, peak)[y] if 0 <= y < height else ""
        bar = self.get_component_rich_style("sparkline--bar")
        zero = self.get_component_rich_style("sparkline--zero")
        segments = [Segment(ch, zero if c == 0 else bar) for ch, c in zip(row, cols, strict=False)]
        return Strip(segments, width).simplify()

    def peak(self) -> float:
        return max(self.data, default=0.0)


