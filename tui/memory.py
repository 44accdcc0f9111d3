"""Fixed, in-memory data behind the feed's Source interface.

For snapshot tests (deterministic screens), `python -m tui --demo`, and the frame-time
benchmark (100,000 jobs, a synthetic 200 events/s stream).  It answers the same
calls as `shared.client.Client` with the same shapes, from a `Dataset` (built by
`tui.sample_data`); it is not a broker (nothing is scheduled), but `simulate` can drive it.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from shared.client import BrokerUnavailable, CutqError, collect_images, result_filename
from shared.states import ACTIVE, TASK_STATES, TERMINAL, TaskState, job_state
from tui.feed import Feed, FeedConfig
from tui.sample_data import Dataset, make_job, make_tasks, sample_image
from tui.sample_data import sample_dataset as sample_dataset  # re-exported: bench/tui_frames.py imports it from here
from tui.sources import retry_failed, worker_tasks

_STATE_RANK = {s: i for i, s in enumerate(TASK_STATES)}  # queued 0, running 1, done 2, failed 3, cancelled 4
SORT_KEYS: dict[str, Callable[[dict], Any]] = {  # as the broker sorts (broker/store/reads.py)
    "created": lambda j: j["created"],
    "state": lambda j: _STATE_RANK.get(j["state"], 5),
    "progress": lambda j: (j["done"] + j["failed"] + j["cancelled"]) / max(j["total"], 1),
    "errors": lambda j: j["failed"],
    "tenant": lambda j: j["tenant"],
}


class MemorySource:
    """A Dataset served through the Source and action calls of `shared.client.Client`."""

    def __init__(self, data: Dataset, clock: Callable[[], float] = time.time) -> None:
        self.data = data
        self.clock = clock
        self._lock = threading.Condition()
        self._events: deque[dict] = deque()
        self._subscribed = False
        self.down = False  # set True to act like an unreachable broker
        self.silent = False  # set True to act like a broker that stopped answering (a hung host)
        self._by_id = {j["job_id"]: j for j in data.jobs}

    def connect(self, timeout: float = 0.0) -> MemorySource:
        return self

    def close(self) -> None:
        pass

    def _check(self) -> None:
        if self.down or self.silent:

            raise BrokerUnavailable("no reply from broker at memory:// within 1s")

    # ------------------------------------------------------------------ reads

    def stats(self) -> dict[str, Any]:
        self._check()
        with self._lock:
            return dict(self.data.stats)

    def probe(self, timeout: float) -> None:
        if self.silent:

            time.sleep(timeout)
            raise BrokerUnavailable(f"no reply from broker at memory:// within {timeout:g}s")
        self._check()

    def workers(self) -> list[dict[str, Any]]:
        self._check()
        with self._lock:
            return [dict(w, tasks=list(w["tasks"])) for w in self.data.workers]

    def list_jobs(self, state: str | None = None, *, search: str | None = None, limit: int = 50,
                  offset: int = 0, sort: str = "created", descending: bool = True) -> dict[str, Any]:
        self._check()
        if sort not in SORT_KEYS:
            raise CutqError(f"cannot sort by {sort!r}", code="bad_request")
        with self._lock:
            jobs = self.data.jobs
            if state or search:
                jobs = [j for j in jobs if (not state or j["state"] == state)
                        and (not search or j["job_id"].startswith(search) or self._name_match(j, search))]
            if sort != "created" or not descending:
                # newest first among equals, as the broker does: a stable sort of the newest-first list
                key = SORT_KEYS[sort]
                jobs = sorted(jobs, key=key, reverse=descending) if descending else sorted(jobs, key=key)
            return {"jobs": [dict(j) for j in jobs[offset:offset + limit]], "total": len(jobs)}

    def _name_match(self, job: dict, search: str) -> bool:
        return any(search in t["name"] for t in self.data.tasks.get(job["job_id"], ()))

    def status(self, job_id: str, *, tasks: bool = True) -> dict[str, Any]:
        self._check()
        with self._lock:
            job = self._by_id.get(job_id)
            if job is None:
                raise CutqError(f"no such job: {job_id}", code="not_found")
            if job_id not in self.data.tasks:
                self.data.tasks[job_id] = make_tasks(job, random.Random(job_id), ["w-1", "w-2"])
            out = dict(job)
            if tasks:
                out["tasks"] = [dict(t) for t in self.data.tasks[job_id]]
            return out

    def running_tasks(self, job_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        return [t for t in self.status(job_id)["tasks"] if t["state"] == TaskState.RUNNING][:limit]

    def worker_tasks(self, worker_id: str, job_ids: list[str]) -> list[dict[str, Any]]:
        return worker_tasks(self, worker_id, job_ids)

    def task_ids(self, job_id: str, state: str) -> list[int]:
        return [t["task_id"] for t in self.status(job_id)["tasks"] if t["state"] == state]

    def retry_failed(self, job_id: str) -> dict[str, Any]:
        return retry_failed(self, job_id)

    # ------------------------------------------------------------------ events

    def subscribe(self, job_id: str | None = None, ttl: float = 10.0) -> None:
        self._check()
        self._subscribed = True

    def unsubscribe(self) -> None:
        self._subscribed = False

    def next_events(self, timeout: float) -> list[dict]:
        if self.silent:  # a hung broker: no error, just nothing (the feed's probe finds out)
            time.sleep(timeout)
            return []
        self._check()
        with self._lock:
            if not self._events:
                self._lock.wait(timeout)
            out = list(self._events)
            self._events.clear()
            return out

    def push(self, events: list[dict]) -> None:
        """Deliver events (and fold job/stats events into the data, like a broker would)."""
        with self._lock:
            for ev in events:
                if ev.get("kind") == "job" and ev.get("job_id") in self._by_id:
                    self._by_id[ev["job_id"]].update({k: v for k, v in ev.items() if k not in ("kind", "t")})
                elif ev.get("kind") == "stats":
                    self.data.stats = {k: v for k, v in ev.items() if k not in ("kind", "t")}
            if self._subscribed:
                self._events.extend(events)
                self._lock.notify_all()

    # ------------------------------------------------------------------ actions

    def submit_paths(self, paths: list[str], processor: str = "rembg", options: dict | None = None,
                     priority: int = 0, tenant: str = "default") -> str:
        """The new job's id (a warning in the reply is dropped here, not warned)."""
        return str(self.submit_paths_reply(paths, processor, options, priority, tenant)["job_id"])

    def submit_paths_reply(self, paths: list[str], processor: str = "rembg", options: dict | None = None,
                           priority: int = 0, tenant: str = "default") -> dict[str, Any]:
        """As the broker acknowledges: {"job_id", "tasks", "cached"}, with a `warning` when the job's
        model (a rembg job's) is not among the models of the workers that are alive (the job waits)."""
        self._check()
        files = collect_images(paths)
        rng = random.Random(len(self.data.jobs))
        job = make_job(rng, self.clock(), TaskState.QUEUED, len(files))
        model = (options or {}).get("model") if processor == "rembg" else None
        job.update(processor=processor, model=(options or {}).get("model"), priority=priority, tenant=tenant)
        with self._lock:
            self.data.jobs.insert(0, job)
            self._by_id[job["job_id"]] = job
            served = {m for w in self.data.workers if w.get("state") == "alive" for m in w.get("models") or []}
        self.push([{"kind": "job", "t": self.clock(), **job}])
        reply: dict[str, Any] = {"job_id": job["job_id"], "tasks": [], "cached": 0}
        if model is not None and model not in served:  # the broker's words (broker/views.py unserved_warning)
            reply["warning"] = (f"no live worker serves model {model}: the job waits in the queue until a worker "
                                f"with its weights joins (waiting for a worker with model {model})")
        return reply

    def _set_tasks(self, job_id: str, task_ids: list[int] | None, from_states: Collection[str], to: str) -> int:
        job = self.status(job_id)
        changed = []
        with self._lock:
            for t in self.data.tasks[job_id]:
                if t["state"] in from_states and (task_ids is None or t["task_id"] in task_ids):
                    t["state"] = to
                    changed.append(t)
            counts = {s: sum(1 for t in self.data.tasks[job_id] if t["state"] == s) for s in TASK_STATES}
            self._by_id[job_id].update(counts, state=job_state(counts))
            job = dict(self._by_id[job_id])
        now = self.clock()
        self.push([{"kind": "task", "job_id": job_id, "task_id": t["task_id"], "name": t["name"], "state": to,
                    "worker": t["worker"], "error": t["error"], "attempt": t["attempts"], "t": now}
                   for t in changed] + [{"kind": "job", "t": now, **job}])
        return len(changed)

    def cancel(self, job_id: str, task_ids: list[int] | None = None) -> dict[str, Any]:
        return {"cancelled": self._set_tasks(job_id, task_ids, ACTIVE, TaskState.CANCELLED)}

    def retry(self, job_id: str, task_ids: list[int] | None = None) -> dict[str, Any]:
        return {"requeued": self._set_tasks(job_id, task_ids, {TaskState.FAILED, TaskState.CANCELLED},
                                           TaskState.QUEUED)}

    def delete(self, job_id: str) -> dict[str, Any]:
        self._check()
        with self._lock:
            job = self._by_id.pop(job_id, None)
            if job is None:
                raise CutqError(f"no such job: {job_id}", code="not_found")
            self.data.jobs.remove(job)
            self.data.tasks.pop(job_id, None)
        return {"job_id": job_id, "deleted": True}

    def purge(self, state: str | None = None, older_than_s: float | None = None,
              tenant: str | None = None) -> dict[str, Any]:
        self._check()
        now = self.clock()
        with self._lock:
            gone = [j for j in self.data.jobs if j["state"] in TERMINAL and (state is None or j["state"] == state)
                    and (older_than_s is None or j["created"] < now - older_than_s)
                    and (tenant is None or j["tenant"] == tenant)]
        for j in gone:
            self.delete(j["job_id"])
        return {"deleted": len(gone), "job_ids": [j["job_id"] for j in gone]}

    def pause(self, paused: bool = True, tenant: str | None = None) -> dict[str, Any]:
        self._check()
        with self._lock:
            self.data.stats["paused"] = paused
            stats = dict(self.data.stats)
        self.push([{"kind": "stats", "t": self.clock(), **stats}])
        return {"paused": paused}

    def fetch_result(self, task_id: int, what: str = "result") -> tuple[dict[str, Any], bytes]:
        self._check()
        return {"task_id": task_id, "ext": "png"}, sample_image(task_id, cutout=what == "result")

    def fetch(self, job_id: str, out_dir: str) -> list[Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for task in self.status(job_id)["tasks"]:
            if task["state"] == TaskState.DONE:
                _, data = self.fetch_result(task["task_id"])
                target = out / result_filename(task["name"], "png")
                target.write_bytes(data)
                written.append(target)
        return written


def memory_feed(source: MemorySource, config: FeedConfig | None = None) -> Feed:
    return Feed(source.connect, label="memory://demo", config=config, clock=source.clock)


def simulate(source: MemorySource, rate: float, stop: threading.Event, clock: Callable[[], float] = time.time,
             jobs: int = 50) -> None:
    """Push ~`rate` task events a second (running -> done) for the newest `jobs` jobs, with their
    job events, and a stats event every second, until `stop` is set."""
    rng = random.Random(1)
    active = source.data.jobs[:jobs]
    next_task = 10_000_000
    tick = 0.05
    per_tick = max(1, round(rate * tick))
    last_stats = 0.0
    history = deque(source.data.stats.get("history") or [], maxlen=120)
    done_this_second = 0
    while not stop.wait(tick):
        now = clock()
        events: list[dict] = []
        touched: dict[str, dict] = {}
        for _ in range(per_tick // 2 or 1):
            job = rng.choice(active)
            next_task += 1
            w = rng.choice(("w-1", "w-2"))
            events.append({"kind": "task", "job_id": job["job_id"], "task_id": next_task, "name": "x.jpg",
                           "state": TaskState.RUNNING, "worker": w, "error": None, "attempt": 1, "t": now})
            events.append({"kind": "task", "job_id": job["job_id"], "task_id": next_task, "name": "x.jpg",
                           "state": TaskState.DONE, "worker": w, "error": None, "attempt": 1, "t": now})
            if job["queued"]:  # one more done, its counts consistent (a finished job's event changes nothing)
                job["queued"] -= 1
                job["done"] += 1
                job["state"] = job_state({s: job[s] for s in TASK_STATES})
                if job["state"] in TERMINAL:
                    job["finished"] = now
            touched[job["job_id"]] = job
            done_this_second += 1
        events += [{"kind": "job", "t": now, **{k: v for k, v in j.items() if k != "options"}}
                   for j in touched.values()]
        if now - last_stats >= 1.0:
            history.append(done_this_second)
            stats = dict(source.data.stats, history=list(history), tasks_per_s=float(done_this_second))
            events.append({"kind": "stats", "t": now, **stats})
            last_stats, done_this_second = now, 0
        source.push(events)
