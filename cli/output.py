"""How the client commands print: JSON for --json, aligned tables and one-line summaries otherwise."""

from __future__ import annotations

import json
import time
from typing import Any

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
