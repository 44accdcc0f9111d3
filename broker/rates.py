"""Throughput and ETA maths, from completions the broker records second by second.

One series for everything and one per tenant, so a client key is only ever shown
numbers computed from its own tenant's completions.
"""

from __future__ import annotations

from collections import defaultdict, deque

RECENT_S = 10  # tasks/s and images/s are averaged over this many seconds
RATE_HORIZON_S = 60  # a tenant's expected rate (for ETAs) over this many seconds
HISTORY_S = 120  # the sparkline history clients are sent


class Throughput:
    """Per-second completion counts, overall and per tenant."""

    def __init__(self, keep_s: int = 600) -> None:
        self._keep = keep_s
        self._all: deque[list[int]] = deque(maxlen=keep_s)  # [second, tasks, images]
        self._tenant: dict[str, deque[list[int]]] = defaultdict(lambda: deque(maxlen=keep_s))

    def record(self, second: int, tenant: str, images: bool) -> None:
        """One task of `tenant` completed during `second` (an image when `images`)."""
        for series in (self._all, self._tenant[tenant]):
            if series and series[-1][0] == second:
                series[-1][1] += 1
                series[-1][2] += images
            else:
                series.append([second, 1, int(images)])

    def _series(self, tenant: str | None) -> deque[list[int]]:
        if tenant is None:
            return self._all
        return self._tenant.get(tenant) or deque()

    def history(self, now_s: int, tenant: str | None = None, span: int = HISTORY_S) -> list[int]:
        """Tasks completed in each of the last `span` whole seconds, oldest first."""
        per_second = {s: t for s, t, _ in self._series(tenant) if s >= now_s - span}
        return [per_second.get(s, 0) for s in range(now_s - span, now_s)]

    def recent(self, now_s: int, tenant: str | None = None) -> tuple[float, float]:
        """(tasks/s, images/s) over the last RECENT_S whole seconds."""
        tasks = images = 0
        for s, t, i in self._series(tenant):
            if now_s - RECENT_S <= s < now_s:
                tasks += t
                images += i
        return tasks / RECENT_S, images / RECENT_S

    def rate(self, now_s: int, tenant: str | None = None) -> float:
        """Tasks/s over the last RATE_HORIZON_S seconds: what a queue can expect to drain at."""
        return sum(t for s, t, _ in self._series(tenant) if s >= now_s - RATE_HORIZON_S) / RATE_HORIZON_S


def eta(n: int, rate: float) -> float | None:
    """Seconds to get through `n` tasks at `rate` (None when nothing completes)."""
    return n / rate if rate > 0 else None
