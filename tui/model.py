"""The dashboard's data, kept on the UI side and advanced by broker events.

Pure Python (no Textual, no sockets): a page of jobs, the worker table and the
task list of the job being inspected.  Every event carries a full snapshot of its
entity (a job event has all counts, a task event the task's state), so applying
events in arrival order after a snapshot always converges to the broker's state.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from shared.states import TERMINAL

JOB_FILTERS: tuple[str | None, ...] = (None, "queued", "running", "done", "failed", "cancelled")


@dataclass(frozen=True)
class JobsQuery:
    """Which page of the jobs list to show: the broker filters and pages, newest first."""

    state: str | None = None
    search: str | None = None
    offset: int = 0
    limit: int = 100

    def page(self, delta: int, total: int) -> JobsQuery:
        """The query for `delta` pages further (clamped to the list)."""
        last = max(0, (max(total, 1) - 1) // self.limit * self.limit)
        return replace(self, offset=min(last, max(0, self.offset + delta * self.limit)))

    def matches_new_job(self, job: dict) -> bool:
        """Whether a job we have not seen belongs at the top of this page (so: reload it)."""
        if self.offset:
            return False  # a new job shifts later pages; don't move rows under the reader
        if self.state and job.get("state") != self.state:
            return False
        if self.search:
            return str(job.get("job_id", "")).startswith(self.search)
        return True


def merge_job(job: dict, event: dict) -> dict:
    """A job row updated by a `job` event (counts, state, finish time)."""
    out = dict(job)
    for key in ("state", "total", "queued", "running", "done", "failed", "cancelled", "errors", "finished",
                "model", "processor", "created", "priority", "tenant"):
        if key in event and event[key] is not None:
            out[key] = event[key]
    if event.get("state") in TERMINAL:
        if not out.get("finished"):
            out["finished"] = event.get("t")
    elif "state" in event:
        out["finished"] = None
    if "errors" not in event and "failed" in event:
        out["errors"] = max(int(out.get("errors") or 0), int(event["failed"] or 0))
    return out


def merge_task(task: dict, event: dict) -> dict:
    """A task row updated by a `task` event (state, worker, attempt, error, timings)."""
    out = dict(task)
    state = event.get("state", out.get("state"))
    t = event.get("t")
    out["state"] = state
    if event.get("worker") is not None:
        out["worker"] = event["worker"]
    if "error" in event:
        out["error"] = event["error"]
    if event.get("attempt") is not None:
        out["attempts"] = max(int(out.get("attempts") or 0), int(event["attempt"]))
    if state == "running":
        out["started"], out["finished"] = t or out.get("started"), None
    elif state in TERMINAL:
        out["finished"] = out.get("finished") or t
    elif state == "queued":
        out["finished"] = None
    return out


class TaskBook:
    """The job being inspected: its row and its tasks, in submission order."""

    def __init__(self, status: dict) -> None:
        self.job: dict = {k: v for k, v in status.items() if k != "tasks"}
        self.tasks: dict[int, dict] = {t["task_id"]: dict(t) for t in status.get("tasks", [])}

    @property
    def job_id(self) -> str:
        return self.job["job_id"]

    def apply(self, events: list[dict]) -> set[int]:
        """Apply events for this job; return the ids of tasks that changed."""
        changed: set[int] = set()
        for ev in events:
            if ev.get("job_id") != self.job_id:
                continue
            kind = ev.get("kind")
            if kind == "job":
                self.job = merge_job(self.job, ev)
            elif kind == "task" and ev.get("task_id") in self.tasks:
                tid = ev["task_id"]
                self.tasks[tid] = merge_task(self.tasks[tid], ev)
                changed.add(tid)
        return changed

    def ids(self, states: frozenset[str] | set[str] | None = None) -> list[int]:
        return [tid for tid, t in self.tasks.items() if states is None or t.get("state") in states]


class WorkerBook:
    """The workers table: a `workers()` snapshot kept current by task and worker events.

    Task events move task ids between workers (busy slots, current tasks, done and
    failed counts); worker events mark joins and deaths.  Heartbeat ages come from
    the snapshots (see `heartbeat_age`).
    """

    def __init__(self) -> None:
        self.workers: dict[str, dict] = {}  # by name
        self._alias: dict[str, str] = {}  # worker id -> name
        self._holder: dict[int, str] = {}  # task id -> worker name
        self.stale = False  # a join we know nothing about yet: ask for a fresh snapshot

    def load(self, workers: list[dict]) -> None:
        self.workers, self._alias, self._holder = {}, {}, {}
        for w in workers:
            row = dict(w)
            name = str(row.get("name") or row.get("id"))
            row["tasks"] = list(row.get("tasks") or [])
            self.workers[name] = row
            if row.get("id") is not None:
                self._alias[str(row["id"])] = name
            for tid in row["tasks"]:
                self._holder[tid] = name
        self.stale = False

    def _name(self, ref: Any) -> str | None:
        if ref is None:
            return None
        ref = str(ref)
        if ref in self.workers:
            return ref
        return self._alias.get(ref)

    def apply(self, events: list[dict]) -> bool:
        """Apply task and worker events; return whether anything visible changed."""
        changed = False
        for ev in events:
            kind = ev.get("kind")
            if kind == "task":
                changed |= self._apply_task(ev)
            elif kind == "worker":
                changed |= self._apply_worker(ev)
        return changed

    def _apply_task(self, ev: dict) -> bool:
        # Events may arrive coalesced (running then done merged into done), so the
        # worker credited for an outcome is the one the event names, else the holder.
        tid, state = ev.get("task_id"), ev.get("state")
        held_by = self._holder.pop(tid, None)
        named = self._name(ev.get("worker"))
        changed = False
        if held_by in self.workers:
            w = self.workers[held_by]
            if tid in w["tasks"]:
                w["tasks"].remove(tid)
            w["busy"] = len(w["tasks"])
            changed = True
        credit = self.workers.get(named or held_by or "")
        requeued_after_error = state == "queued" and held_by is not None and bool(ev.get("error"))
        if credit is not None and (state in ("done", "failed") or requeued_after_error):
            if state == "done":
                credit["done"] = int(credit.get("done") or 0) + 1
            else:
                credit["failed"] = int(credit.get("failed") or 0) + 1
            credit["last_seen_age"] = 0.0
            changed = True
        if state == "running" and named is not None:
            w = self.workers[named]
            w["tasks"].append(tid)
            w["busy"] = len(w["tasks"])
            w["last_seen_age"] = 0.0
            self._holder[tid] = named
            changed = True
        return changed

    def _apply_worker(self, ev: dict) -> bool:
        name, state = str(ev.get("worker")), ev.get("state")
        w = self.workers.get(name) or self.workers.get(self._alias.get(name, ""), None)
        if state == "joined":
            if w is None:
                self.workers[name] = {"name": name, "id": name, "host": "", "pid": None, "slots": 0, "busy": 0,
                                      "models": [], "tasks": [], "done": 0, "failed": 0, "state": "alive",
                                      "last_seen_age": 0.0, "joined": ev.get("t"), "tasks_per_s": 0.0}
            else:
                w.update(state="alive", last_seen_age=0.0, tasks=[], busy=0)
            self.stale = True
            return True
        if w is None:
            return False
        w["state"] = state or "dead"
        for tid in w["tasks"]:
            self._holder.pop(tid, None)
        w["tasks"], w["busy"], w["tasks_per_s"] = [], 0, 0.0
        return True

    def display_name(self, ref: Any) -> str:
        """A worker's name for a task's `worker` field (which may hold its id)."""
        if ref is None:
            return "–"
        return self._name(ref) or str(ref)

    def heartbeat_age(self, w: dict) -> float:
        """The age the broker last reported (or 0 after a task event from the worker).

        Deliberately not ticked locally between snapshots: the broker declares a worker
        dead after missed heartbeats, so a growing local guess would only cry wolf."""
        return float(w.get("last_seen_age") or 0.0)

    def rows(self) -> list[dict]:
        """Alive workers first, then by name."""
        return sorted(self.workers.values(), key=lambda w: (w.get("state") != "alive", str(w.get("name"))))

    def summary(self) -> tuple[int, int]:
        alive = sum(1 for w in self.workers.values() if w.get("state") == "alive")
        return alive, len(self.workers) - alive
