"""How the client commands print: JSON for --json, aligned tables and one-line summaries otherwise."""

from __future__ import annotations

import json
import time
from typing import Any, TextIO

from shared.states import TASK_STATES


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def ago(t: float | None) -> str:
    """A timestamp as local date and time, '-' for none."""
    if not t:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def counts(d: dict[str, Any]) -> str:
    """`queued=1 running=0 ...` in the states' canonical order."""
    return " ".join(f"{s}={d.get(s, 0)}" for s in TASK_STATES)


def bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def size(n: float) -> str:
    """Bytes for a person: 512 B, 1.5 KiB, 20.0 MiB, 2.1 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # not reached


class UploadLine:
    """`progress` for Client.submit: one line on a terminal, redrawn with \r (at most 10 times a second)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.drawn = False
        self._last = 0.0

    def __call__(self, sent: int, total: int | None) -> None:
        now = time.monotonic()
        if self.drawn and now - self._last < 0.1 and sent != total:
            return
        self._last = now
        pct = f" ({100 * sent / total:.0f}%)" if total else ""
        of = f" / {size(total)}" if total else ""
        self.stream.write(f"\ruploading {size(sent)}{of}{pct}\x1b[K")
        self.stream.flush()
        self.drawn = True

    def end(self) -> None:
        """Leave the line (after the job is acknowledged, or on an error)."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def short_counts(d: dict[str, Any]) -> str:
    """`q1 r0 d5 f0 c0`: counts() for a narrow terminal."""
    return " ".join(f"{s[0]}{d.get(s, 0)}" for s in TASK_STATES)


def watch_line(status: dict[str, Any], width: int, note: str = "") -> str:
    """One job's progress in at most `width` characters: id, bar, ended/total, state, `note`
    (such as "dispatch paused") and the per-state counts, the bar and counts shrinking to fit
    (every count, then the non-zero ones, then `q0 r1 d5 f0 c0`, then none)."""
    total = status["total"]
    ended = total - status["queued"] - status["running"]
    head = f"{status['job_id']} "
    tail = f" {ended}/{total} {status['state']}" + (f" ({note})" if note else "")
    nonzero = " ".join(f"{s}={status[s]}" for s in TASK_STATES if status.get(s))
    for extra in ("  " + counts(status), "  " + nonzero, "  " + short_counts(status), ""):
        room = width - len(head) - len(tail) - len(extra) - 2
        if room >= 10:
            return head + bar(ended, total, min(30, room)) + tail + extra
    return (head + tail.lstrip())[:max(0, width)]


class LiveLine:
    """A line redrawn in place on a terminal: cursor back to its start (up as many rows as a
    resize made it wrap), clear to the end of the screen, draw; `end()` moves below it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.shown = 0  # characters of the line now on the screen (0: none)

    def draw(self, line: str, columns: int) -> None:
        rows_up = max(0, (self.shown - 1) // max(1, columns)) if self.shown else 0
        up = f"\x1b[{rows_up}A" if rows_up else ""
        self.stream.write(f"{up}\r{line}\x1b[J")
        self.stream.flush()
        self.shown = len(line)

    def end(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = 0
