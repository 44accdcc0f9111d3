"""The dashboard's data, kept on the UI side and advanced by broker events.

Pure Python (no Textual, no sockets): a page of jobs, the worker table and the
task list of the job being inspected.  Every event carries a full snapshot of its
entity (a job event has all counts, a task event the task's state), so applying
events in arrival order after a snapshot always converges to the broker's state.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from shared.states import TASK_STATES, TERMINAL, TaskState
from tui import fmt

JOB_FILTERS: tuple[str | None, ...] = (None, *TASK_STATES)
# what the broker sorts every job by (ListJobs.sort), and what the sort is called on screen
JOB_SORTS: tuple[tuple[str, str], ...] = (
    ("created", "submitted"), ("state", "state"), ("progress", "progress"), ("errors", "failures"),
    ("tenant", "tenant"),
)
COUNT_KEYS = TASK_STATES  # a job row has a count of its tasks in each state


@dataclass(frozen=True)
class JobsQuery:
    """Which page of the jobs list to show: the broker filters, sorts (every job) and pages."""

    state: str | None = None
    search: str | None = None
    offset: int = 0
    limit: int = 100
    sort: str = "created"
    descending: bool = True

    def page(self, delta: int, total: int) -> JobsQuery:
        """The query for `delta` pages further (clamped to the list)."""
        return replace(self, offset=min(self.last_offset(total), max(0, self.offset + delta * self.limit)))

    def last_offset(self, total: int) -> int:
        return max(0, (max(total, 1) - 1) // self.limit * self.limit)

    def clamped(self, total: int) -> JobsQuery:
        """This query, moved back onto the list when it shrank under the page (jobs deleted)."""
        return self if self.offset <= self.last_offset(total) else replace(self, offset=self.last_offset(total))

    def matches_new_job(self, job: dict) -> bool:
        """Whether a job we have not seen belongs at the top of this page (so: reload it)."""
        if self.offset:
            return False  # a new job shifts later pages; don't move rows under the reader
        if self.sort != "created" or not self.descending:
            return False  # a new job lands somewhere in the order: the next reload shows it
        if self.state and job.get("state") != self.state:
            return False
        if self.search:
            return str(job.get("job_id", "")).startswith(self.search)
        return True


def page_range(offset: int, shown: int, total: int) -> str:
    """'101–200 of 307' for a page of rows; never a range past the total or backwards."""
    total = max(total, 0)
    shown = max(0, min(shown, total - offset)) if total > offset else 0
    if not shown:
        return f"0 of {fmt.count(total)}"
    return f"{fmt.count(offset + 1)}–{fmt.count(offset + shown)} of {fmt.count(total)}"


def counts_of(job: dict) -> dict[str, int]:
    """A job's task counts, clamped into its total (an event may race a reload)."""
    total = max(0, int(job.get("total") or 0))
    out: dict[str, int] = {}
    left = total
    for key in fmt.FINISHED_FIRST:
        n = max(0, min(int(job.get(key) or 0), left))
        out[key] = n
        left -= n
    return out


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
    if state == TaskState.RUNNING:
        out["started"], out["finished"] = t or out.get("started"), None
    elif state in TERMINAL:
        out["finished"] = out.get("finished") or t
    elif state == TaskState.QUEUED:
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


LIVE = ("alive", "draining")  # worker states that still hold slots
RECENT_TASKS = 20  # outcomes remembered per worker for its detail screen
HOUR_MINUTES = 60


class Throughput:
    """Tasks done per second, as the broker's stats report them (its last 120 s), kept by this
    client for an hour: each stats snapshot is merged in second by second, so the record
    outlives a broker restart (whose history starts from zero) and a reconnect."""

    def __init__(self, keep_s: int = 3600) -> None:
        self.keep_s = keep_s
        self.per_second: dict[int, float] = {}

    def merge(self, history: list[float] | None, now: float) -> None:
        """`history`: tasks done in each whole second before `now`, oldest first."""
        if not history:
            return
        end = int(now)
        start = end - len(history)
        per = self.per_second
        for i, v in enumerate(history):
            s = start + i
            # a restarted broker reports 0 for seconds it did not see: never lower what we know
            if v > per.get(s, -1.0):
                per[s] = float(v)
        floor = end - self.keep_s
        if len(per) > self.keep_s + 300:
            for s in [s for s in per if s < floor]:
                del per[s]

    def seconds(self, now: float, span: int = 120) -> list[float]:
        """Tasks done in each of the last `span` seconds; -1 before the first one we know of."""
        end = int(now)
        first = min(self.per_second, default=end)
        return [self.per_second.get(s, 0.0) if s >= first else -1.0 for s in range(end - span, end)]

    def minutes(self, now: float, span: int = HOUR_MINUTES) -> list[float]:
        """Mean tasks/s in each of the last `span` whole minutes, oldest first; minutes before the
        first second we know of are -1 (no data, drawn blank)."""
        last = int(now) // 60
        first_known = min(self.per_second, default=None)
        out = []
        for m in range(last - span, last):
            if first_known is None or (m + 1) * 60 <= first_known:
                out.append(-1.0)
                continue
            out.append(sum(self.per_second.get(s, 0.0) for s in range(m * 60, m * 60 + 60)) / 60.0)
        return out

    def known_span(self, now: float) -> float:
        first = min(self.per_second, default=None)
        return 0.0 if first is None else max(0.0, now - first)


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
        self.task_job: dict[int, str] = {}  # task id -> job id, for the tasks workers hold now
        self.recent: dict[str, deque[dict]] = {}  # worker name -> its last outcomes, newest last
        self.done_per_minute: dict[str, dict[int, int]] = {}  # worker name -> minute -> tasks done

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
        requeued_after_error = state == TaskState.QUEUED and held_by is not None and bool(ev.get("error"))
        if credit is not None and (state in (TaskState.DONE, TaskState.FAILED) or requeued_after_error):
            if state == TaskState.DONE:
                credit["done"] = int(credit.get("done") or 0) + 1
            else:
                credit["failed"] = int(credit.get("failed") or 0) + 1
            credit["last_seen_age"] = 0.0
        if credit is not None and (state in TERMINAL or requeued_after_error):
            self._record(str(credit.get("name") or credit.get("id")), ev)
            changed = True
        if state == TaskState.RUNNING and named is not None:
            w = self.workers[named]
            w["tasks"].append(tid)
            w["busy"] = len(w["tasks"])
            w["last_seen_age"] = 0.0
            self._holder[tid] = named
            if ev.get("job_id"):
                self.task_job[tid] = str(ev["job_id"])
            changed = True
        elif tid is not None:
            self.task_job.pop(tid, None)
        return changed

    def _record(self, name: str, ev: dict) -> None:
        """Remember an outcome for the worker's detail: its recent tasks and done per minute."""
        recent = self.recent.setdefault(name, deque(maxlen=RECENT_TASKS))
        recent.append({"task_id": ev.get("task_id"), "job_id": ev.get("job_id"), "state": ev.get("state"),
                       "error": ev.get("error"), "t": ev.get("t")})
        if ev.get("state") == TaskState.DONE and ev.get("t"):
            minutes = self.done_per_minute.setdefault(name, {})
            minute = int(ev["t"]) // 60
            minutes[minute] = minutes.get(minute, 0) + 1
            for old in [m for m in minutes if m < minute - HOUR_MINUTES]:
                del minutes[old]

    def minutes(self, name: str, now: float, since: float | None = None, span: int = HOUR_MINUTES) -> list[float]:
        """The worker's tasks done per second, averaged over each of the last `span` minutes, oldest
        first, the current one over its seconds so far; minutes before `since` (when this client
        started to listen) are -1: unknown, drawn blank rather than as zero."""
        per = self.done_per_minute.get(name, {})
        current = int(now) // 60
        out = []
        for m in range(current - span + 1, current + 1):
            if since is not None and (m + 1) * 60 <= since:
                out.append(-1.0)
                continue
            seconds = 60.0 if m < current else max(1.0, now - m * 60)
            out.append(per.get(m, 0) / seconds)
        return out

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
        return sorted(self.workers.values(), key=lambda w: (w.get("state") not in LIVE, str(w.get("name"))))

    def summary(self) -> tuple[int, int]:
        alive = sum(1 for w in self.workers.values() if w.get("state") in LIVE)
        return alive, len(self.workers) - alive

    def capacity(self) -> tuple[int, int]:
        """(busy slots, slots) of the live workers: what the overview and the workers panel both show."""
        live = [w for w in self.workers.values() if w.get("state") in LIVE]
        return sum(int(w.get("busy") or 0) for w in live), sum(int(w.get("slots") or 0) for w in live)
