"""Pushed events: task and job changes after each commit, and stats once a second.

A subscriber hears only about its own tenant (or one job); worker events without a
job go to admins only.  Building them never writes; sending is the server's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from broker import views
from broker.core import Core
from broker.store import Change
from shared import protocol as p

Send = Callable[[bytes, list[bytes]], object]


def publish(core: Core, changes: Iterable[Change], worker_events: list[dict[str, Any]], send: Send) -> None:
    """Send each subscriber the committed changes it may see, with the jobs they touched."""
    subscribers = core.registry.subscribers
    if not subscribers:
        return
    now = core.wall()
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in changes:
        by_job[c.job_id].append({"kind": "task", "job_id": c.job_id, "task_id": c.task_id, "state": c.state,
                                 "worker": c.worker, "error": c.error, "attempt": c.attempt, "t": now})
    for e in worker_events:
        e.setdefault("t", now)
        if e.get("job_id"):
            by_job[e["job_id"]].append(e)
    tenant_of: dict[str, str] = {}
    for job_id in list(by_job):
        job = core.store.job(job_id)
        if job is not None:
            job.pop("options", None)
            tenant_of[job_id] = job["tenant"]
            by_job[job_id].append({"kind": "job", "t": now, **job})
    unscoped = [e for e in worker_events if not e.get("job_id")]
    for ident, sub in list(subscribers.items()):
        if sub.job_id is not None:
            events = by_job.get(sub.job_id, [])
        else:
            events = [e for job_id, evs in by_job.items()
                      if sub.tenant is None or tenant_of.get(job_id) == sub.tenant for e in evs]
            if sub.tenant is None:
                events += unscoped
        if events:
            send(ident, p.encode(p.Events(events=events)))


def publish_stats(core: Core, send: Send) -> None:
    """Each whole-queue subscriber gets its tenant's stats (admins: everything)."""
    encoded: dict[str | None, list[bytes]] = {}
    for ident, sub in list(core.registry.subscribers.items()):
        if sub.job_id is not None:
            continue
        if sub.tenant not in encoded:
            event = {"kind": "stats", "t": core.wall(), **views.stats(core, sub.tenant)}
            encoded[sub.tenant] = p.encode(p.Events(events=[event]))
        send(ident, encoded[sub.tenant])
