"""Pure formatting helpers for the dashboard: numbers, times, durations, state colours.

No Textual imports (Rich `Text` only), so everything here is unit-testable.
"""

from __future__ import annotations

import time

from rich.text import Text

from shared.states import ACTIVE, TaskState

STATE_STYLE: dict[str, str] = {
    TaskState.QUEUED: "#8fa3bf",
    TaskState.RUNNING: "bold #e0af68",
    TaskState.DONE: "#9ece6a",
    TaskState.FAILED: "bold #f7768e",
    TaskState.CANCELLED: "#737aa2",
    "alive": "#9ece6a",
    "dead": "bold #f7768e",
    "left": "#737aa2",
    "draining": "#e0af68",
    "unknown": "#737aa2",
}
STATE_ICON: dict[str, str] = {
    TaskState.QUEUED: "◌",
    TaskState.RUNNING: "▶",
    TaskState.DONE: "✔",
    TaskState.FAILED: "✖",
    TaskState.CANCELLED: "⊘",
    "alive": "●",
    "dead": "✖",
    "left": "○",
    "draining": "◐",
    "unknown": "?",
}
# task states, the finished ones first: the order counts are shown and apportioned in
FINISHED_FIRST: tuple[str, ...] = (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED, TaskState.RUNNING,
                                   TaskState.QUEUED)
BAR_DONE = "#9ece6a"
BAR_FAILED = "#f7768e"
BAR_CANCELLED = "#737aa2"
BAR_RUNNING = "#e0af68"
BAR_EMPTY = "#3b4261"


def count(n: int | float | None) -> str:
    """1234567 -> '1,234,567'; None -> '–'."""
    if n is None:
        return "–"
    return f"{int(n):,}"


def compact(n: int | float | None) -> str:
    """A count in at most 5 characters: 999, 12.3k, 100k, 4.5M."""
    if n is None:
        return "–"
    n = int(n)
    if abs(n) < 10_000:
        return str(n)
    for unit, div in (("k", 1_000), ("M", 1_000_000), ("G", 1_000_000_000)):
        if abs(n) < div * 1000:
            v = n / div
            return f"{v:.1f}{unit}" if abs(v) < 100 else f"{v:.0f}{unit}"
    return f"{n / 1e12:.0f}T"


def rate(x: float | None) -> str:
    """Throughput per second with sensible precision."""
    if x is None:
        return "–"
    if x == 0:
        return "0"
    if x < 10:
        return f"{x:.1f}"
    return f"{x:,.0f}"


def duration(seconds: float | None) -> str:
    """0.42 -> '0.4s', 75 -> '1m15s', 7260 -> '2h01m', 200000 -> '2d07h'; None -> '–'."""
    if seconds is None:
        return "–"
    s = max(0.0, float(seconds))
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def clock(ts: float | None, now: float, short: bool = False) -> str:
    """A wall time: '13:04:05' today ('13:04' if short), 'Nov 21 13:04' ('11-21' if short)
    on another day; None -> '–'."""
    if not ts:
        return "–"
    lt, ln = time.localtime(ts), time.localtime(now)
    if lt[:3] == ln[:3]:
        return time.strftime("%H:%M" if short else "%H:%M:%S", lt)
    return time.strftime("%m-%d" if short else "%b %d %H:%M", lt)


def ago(ts: float | None, now: float) -> str:
    """How long ago: '12s ago'."""
    if not ts:
        return "–"
    return f"{duration(now - ts)} ago"


def size(n: int | None) -> str:
    """Bytes: 1536 -> '1.5 KB'."""
    if n is None:
        return "–"
    v = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if v < 1024 or unit == "GB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} GB"


def state_text(state: str, icon: bool = True) -> Text:
    """A coloured state label ('✔ done')."""
    label = f"{STATE_ICON.get(state, '?')} {state}" if icon else state
    return Text(label, style=STATE_STYLE.get(state, ""))


def progress_bar(job: dict, width: int = 12, marks: bool = True) -> Text:
    """A stacked bar of a job's tasks (done, failed, cancelled, running; the rest queued), then
    'done/total' and, when there are any, the failed (✖) and cancelled (⊘) counts apart:
    a cancelled job with 20 of 29 done reads '20/29 ⊘9', never '29/29'.

    The bar is `width` cells; each state gets cells in proportion to its count, at
    least one cell when the count is non-zero, so a single failure stays visible.
    Counts are clamped into the total (an event racing a reload cannot overfill it).
    """
    total = max(0, int(job.get("total") or 0))
    left = total
    counts: dict[str, int] = {}
    for key in FINISHED_FIRST[:-1]:  # the rest is queued
        counts[key] = max(0, min(int(job.get(key) or 0), left))
        left -= counts[key]
    parts = [(counts["done"], BAR_DONE), (counts["failed"], BAR_FAILED), (counts["cancelled"], BAR_CANCELLED),
             (counts["running"], BAR_RUNNING)]
    cells = _apportion([n for n, _ in parts], total, width)
    bar = Text(no_wrap=True)
    used = 0
    for (_, colour), n in zip(parts, cells, strict=False):
        if n:
            bar.append("━" * n, style=colour)
            used += n
    if used < width:
        bar.append("━" * (width - used), style=BAR_EMPTY)
    bar.append(f" {counts['done']}/{total}", style="")
    if marks:
        for key in (TaskState.FAILED, TaskState.CANCELLED):
            if counts[key]:
                bar.append(f" {STATE_ICON[key]}{counts[key]}", style=STATE_STYLE[key])
    return bar


def _apportion(counts: list[int], total: int, width: int) -> list[int]:
    """Cells per count out of `width`, proportional to count/total, non-zero counts >= 1 cell."""
    if total <= 0 or width <= 0:
        return [0] * len(counts)
    cells = [0 if c <= 0 else max(1, round(c * width / total)) for c in counts]
    while sum(cells) > width:  # rounding up small parts can overflow; take from the largest
        i = max(range(len(cells)), key=lambda k: cells[k])
        cells[i] -= 1
    return cells


def percent(job: dict) -> int:
    """Done tasks as a whole percentage of the job (failed and cancelled ones are not done)."""
    total = int(job.get("total") or 0)
    if not total:
        return 100
    return max(0, min(100, int(100 * int(job.get("done") or 0) / total)))


def job_duration(job: dict, now: float) -> float | None:
    """Seconds from submission to finish (or to now, while active)."""
    created = job.get("created")
    if not created:
        return None
    end = job.get("finished") or (now if job.get("state") in ACTIVE else None)
    return None if end is None else end - created


def task_duration(task: dict, now: float) -> float | None:
    """Seconds a task ran (started -> finished, or -> now while running)."""
    started = task.get("started")
    if not started:
        return None
    end = task.get("finished") or (now if task.get("state") == TaskState.RUNNING else None)
    return None if end is None else end - started


def short_id(job_id: str, n: int = 8) -> str:
    return job_id[:n]
