"""The dispatch policy: which queued task goes next.  Pure: no sockets, no SQL.

Across tenants: weighted round robin (deficit style), so a tenant with 10 tasks
behind another's 10,000 is served within one round.  Within a tenant: higher
priority first, then submission order.  Tasks delayed by retry backoff wait in a
timer heap until their `not_before`.  Entries are never removed eagerly: the store's
compare-and-set in `claim` skips anything no longer queued (cancelled, duplicated).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class _Tenant:
    heap: list[tuple[int, int, int]] = field(default_factory=list)  # (-priority, seq, task_id)
    deficit: float = 0.0


class Scheduler:
    """In-memory mirror of the queued tasks, rebuilt from the store at start-up."""

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        self._tenants: OrderedDict[str, _Tenant] = OrderedDict()
        self._delayed: list[tuple[float, int, int, str, int]] = []  # (not_before, seq, task_id, tenant, prio)
        self._seq = itertools.count()
        self.weights: dict[str, float] = dict(weights or {})
        self.paused_all = False
        self.paused: set[str] = set()

    def __len__(self) -> int:
        return sum(len(t.heap) for t in self._tenants.values()) + len(self._delayed)

    def push(self, task_id: int, tenant: str, priority: int = 0, not_before: float = 0.0, now: float = 0.0) -> None:
        """Queue a task, or hold it until `not_before` (retry backoff)."""
        if not_before > now:
            heapq.heappush(self._delayed, (not_before, next(self._seq), task_id, tenant, priority))
            return
        t = self._tenants.get(tenant)
        if t is None:
            t = self._tenants[tenant] = _Tenant()
        heapq.heappush(t.heap, (-priority, next(self._seq), task_id))

    def next_wakeup(self) -> float | None:
        """When the earliest delayed task becomes due, if any."""
        return self._delayed[0][0] if self._delayed else None

    def release_due(self, now: float) -> int:
        """Move delayed tasks whose time has come into their tenant's queue."""
        n = 0
        while self._delayed and self._delayed[0][0] <= now:
            _, _, task_id, tenant, prio = heapq.heappop(self._delayed)
            self.push(task_id, tenant, prio)
            n += 1
        return n

    def ready(self) -> bool:
        """True if some tenant that is not paused has a task waiting."""
        if self.paused_all:
            return False
        return any(t.heap and name not in self.paused for name, t in self._tenants.items())

    def pop(self, n: int) -> list[int]:
        """Up to n task ids, fairly across tenants by weight."""
        out: list[int] = []
        if self.paused_all:
            return out
        while len(out) < n:
            active = [(name, t) for name, t in self._tenants.items() if t.heap and name not in self.paused]
            if not active:
                break
            if len(active) == 1 and not self.weights:
                heap = active[0][1].heap  # one tenant: no fairness to keep, take a slice
                while heap and len(out) < n:
                    out.append(heapq.heappop(heap)[2])
                break
            for name, t in active:
                t.deficit += self.weights.get(name, 1.0)
                while t.deficit >= 1.0 and t.heap and len(out) < n:
                    out.append(heapq.heappop(t.heap)[2])
                    t.deficit -= 1.0
                if len(out) >= n:
                    # resume after this tenant next time, so no tenant is always first
                    self._tenants.move_to_end(name)
                    break
                if not t.heap:
                    t.deficit = 0.0
        for name in [k for k, t in self._tenants.items() if not t.heap]:
            del self._tenants[name]
        return out
