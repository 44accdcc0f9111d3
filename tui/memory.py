"""Fixed, in-memory data behind the feed's Source interface.

For snapshot tests (deterministic screens), `python -m tui --demo`, and the frame-time
benchmark (100,000 jobs, a synthetic 200 events/s stream).  It answers the same
calls as `shared.client.Client` with the same shapes, from a `Dataset` built here;
it is not a broker (nothing is scheduled), but `simulate` can drive it.
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from shared.client import CutqError, collect_images, result_filename
from shared.states import TASK_STATES, TERMINAL, job_state
from tui.feed import Feed, FeedConfig, retry_failed, worker_tasks

_STATE_RANK = {"queued": 0, "running": 1, "done": 2, "failed": 3, "cancelled": 4}
SORT_KEYS: dict[str, Callable[[dict], Any]] = {  # as the broker sorts (broker/store/reads.py)
    "created": lambda j: j["created"],
    "state": lambda j: _STATE_RANK.get(j["state"], 5),
    "progress": lambda j: (j["done"] + j["failed"] + j["cancelled"]) / max(j["total"], 1),
    "errors": lambda j: j["failed"],
    "tenant": lambda j: j["tenant"],
}

MODELS = ("u2netp", "u2net", "isnet-general-use", "birefnet-general-lite")
NAMES = ("IMG_", "DSC_", "product-", "portrait-", "PXL_2024")


@dataclass
class Dataset:
    """Everything the source serves; `jobs` newest first."""

    jobs: list[dict]
    workers: list[dict]
    stats: dict
    tasks: dict[str, list[dict]] = field(default_factory=dict)


def _hex(rng: random.Random, n: int = 12) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def make_job(rng: random.Random, created: float, state_mix: str, total: int) -> dict:
    """One job row with counts consistent with `state_mix` (queued/running/done/failed/cancelled)."""
    counts = dict.fromkeys(TASK_STATES, 0)
    if state_mix == "queued":
        counts["queued"] = total
    elif state_mix == "running":
        done = rng.randint(0, total - 1)
        running = min(total - done, rng.randint(1, 4))
        failed = min(total - done - running, rng.choice((0, 0, 1)))
        counts.update(done=done, running=running, failed=failed, queued=total - done - running - failed)
    elif state_mix == "failed":
        failed = rng.randint(1, max(1, total // 4))
        counts.update(failed=failed, done=total - failed)
    elif state_mix == "cancelled":
        done = rng.randint(0, total - 1)
        counts.update(done=done, cancelled=total - done)
    else:
        counts["done"] = total
    processor = rng.choice(("rembg", "rembg", "rembg", "noop"))
    finished = None if state_mix in ("queued", "running") else created + rng.uniform(1, 30) * total ** 0.5
    return {
        "job_id": _hex(rng), "created": created, "processor": processor,
        "model": rng.choice(MODELS) if processor == "rembg" else None, "tenant": rng.choice(("default", "web")),
        "priority": rng.choice((0, 0, 0, 5)), "state": job_state(counts), "total": total, **counts,
        "finished": finished, "errors": counts["failed"], "options": {"format": "png"},
    }


def make_tasks(job: dict, rng: random.Random, workers: list[str], first_id: int | None = None) -> list[dict]:
    """Task rows matching a job's counts, in submission order (ids from `first_id`, else from the
    job id: task ids are unique across jobs, as the broker's are)."""
    if first_id is None:
        first_id = (int(job["job_id"][:8], 16) + 1) * 1000
    states: list[str] = []
    for s in ("done", "failed", "cancelled", "running", "queued"):
        states += [s] * int(job.get(s) or 0)
    tasks = []
    t0 = job["created"]
    for i, state in enumerate(states):
        started = None if state in ("queued",) or (state == "cancelled" and i % 2) else t0 + 0.5 + i * 0.7
        finished = started + rng.uniform(0.3, 2.5) if started and state in TERMINAL else None
        error = None
        if state == "failed":
            error = rng.choice((
                "cannot identify image file: not a PNG, JPEG or WebP (gave up after 1 attempts)",
                "worker w-2 lost: no heartbeat for 3.1s (attempt 3 of 3, gave up)",
                "image is 12000x9000 pixels, over the 64000000 pixel limit",
            ))
        tasks.append({
            "task_id": first_id + i, "job_id": job["job_id"], "name": f"{rng.choice(NAMES)}{4000 + i}.jpg",
            "state": state, "attempts": (0 if state == "queued" else 1) + (state == "failed"),
            "worker": rng.choice(workers) if started else None, "error": error, "created": t0,
            "started": started, "finished": finished, "result_ext": "png" if state == "done" else None,
            "input_size": rng.randint(180_000, 6_000_000),
        })
    return tasks


def sample_dataset(now: float, jobs: int = 40, seed: int = 7) -> Dataset:
    """A plausible, deterministic system: a few active jobs on top, history below."""
    rng = random.Random(seed)
    workers = [
        {"id": "w-1", "name": "gpu-box-1", "host": "gpu-box", "pid": 4121, "slots": 4, "busy": 4,
         "models": ["u2netp", "isnet-general-use"], "providers": ["CUDAExecutionProvider"],
         "processors": ["rembg", "noop", "sleep"], "tasks": [1201, 1202, 1203, 1204], "last_seen_age": 0.4,
         "done": 18_204, "failed": 12, "state": "alive", "joined": now - 86_000, "tasks_per_s": 9.6},
        {"id": "w-2", "name": "cpu-worker-2", "host": "render-02", "pid": 90311, "slots": 2, "busy": 1,
         "models": ["u2netp"], "providers": ["CPUExecutionProvider"], "processors": ["rembg", "noop", "sleep"],
         "tasks": [1205], "last_seen_age": 1.1, "done": 3_911, "failed": 4, "state": "alive",
         "joined": now - 7_200, "tasks_per_s": 1.8},
        {"id": "w-3", "name": "laptop-3", "host": "mbp", "pid": 777, "slots": 1, "busy": 0, "models": [],
         "providers": [], "processors": ["rembg"], "tasks": [], "last_seen_age": 48.0, "done": 96, "failed": 1,
         "state": "dead", "joined": now - 3_000, "tasks_per_s": 0.0},
    ]
    rows: list[dict] = []
    t = now - 20
    head = ["running", "running", "queued", "failed", "done", "cancelled"]
    for i in range(jobs):
        mix = head[i] if i < len(head) else rng.choices(("done", "failed", "cancelled"), (90, 7, 3))[0]
        total = 240 if i == 0 else rng.choice((1, 1, 4, 12, 40, 120))
        rows.append(make_job(rng, t, mix, total))
        t -= rng.uniform(5, 400)
    totals = {s: sum(int(j[s]) for j in rows) for s in TASK_STATES}
    history = [round(8 + 5 * ((k * 7919) % 13) / 13 + (3 if 40 < k < 70 else 0), 1) for k in range(120)]
    stats = {
        **totals, "jobs": len(rows), "queue_depth": totals["queued"], "tasks_per_s": history[-1],
        "images_per_s": round(history[-1] * 0.9, 1), "history": history, "workers_busy": 2, "workers_total": 2,
        "slots_used": 5, "slots_total": 6, "paused": False,
        "eta_s": totals["queued"] / history[-1] if history[-1] else None,
    }
    data = Dataset(jobs=rows, workers=workers, stats=stats)
    names = [w["id"] for w in workers[:2]]
    first = 1000
    for job in rows[:6]:
        data.tasks[job["job_id"]] = make_tasks(job, random.Random(job["job_id"]), names, first)
        first += job["total"]
    # the workers hold exactly the running tasks (the overview, the workers and the jobs agree)
    running = [t for tasks in data.tasks.values() for t in tasks if t["state"] == "running"]
    for w in workers[:2]:
        w["tasks"] = []
    for i, t in enumerate(running):
        w = workers[0] if i % 3 != 2 else workers[1]
        t["worker"] = w["id"]
        t["started"] = now - 2.5 - 1.5 * i  # running for a few seconds, never since the future
        w["tasks"].append(t["task_id"])
    for w in workers:
        w["busy"] = len(w["tasks"])
    stats.update(slots_used=len(running), workers_busy=sum(1 for w in workers if w["busy"]))
    return data


def sample_image(seed: int, cutout: bool, size: tuple[int, int] = (160, 120)) -> bytes:
    """A small synthetic 'photo' (a subject on a background) or its cut-out, as PNG bytes."""
    rng = random.Random(seed)
    w, h = size
    hue = rng.randint(0, 255)
    if cutout:
        img = Image.new("RGBA", size, (0, 0, 0, 0))
    else:
        img = Image.new("RGBA", size)
        top, bottom = (40 + hue % 60, 90, 140), (200, 180 - hue % 80, 120)
        for y in range(h):  # a sky-to-ground gradient
            f = y / max(1, h - 1)
            colour = tuple(int(a + (b - a) * f) for a, b in zip(top, bottom, strict=True)) + (255,)
            img.paste(colour, (0, y, w, y + 1))
    draw = ImageDraw.Draw(img)
    cx, cy = w // 2 + rng.randint(-10, 10), h // 2 + 8
    draw.ellipse((cx - 28, cy - 40, cx + 28, cy + 4), fill=(230, 190, 150, 255))  # head
    draw.rounded_rectangle((cx - 46, cy, cx + 46, h + 20), radius=20, fill=(60 + hue % 150, 70, 160, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


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
            from shared.client import BrokerUnavailable

            raise BrokerUnavailable("no reply from broker at memory:// within 1s")

    # ------------------------------------------------------------------ reads

    def stats(self) -> dict[str, Any]:
        self._check()
        with self._lock:
            return dict(self.data.stats)

    def probe(self, timeout: float) -> None:
        if self.silent:
            from shared.client import BrokerUnavailable

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
        return [t for t in self.status(job_id)["tasks"] if t["state"] == "running"][:limit]

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
        self._check()
        files = collect_images(paths)
        rng = random.Random(len(self.data.jobs))
        job = make_job(rng, self.clock(), "queued", len(files))
        job.update(processor=processor, model=(options or {}).get("model"), priority=priority, tenant=tenant)
        with self._lock:
            self.data.jobs.insert(0, job)
            self._by_id[job["job_id"]] = job
        self.push([{"kind": "job", "t": self.clock(), **job}])
        return job["job_id"]

    def _set_tasks(self, job_id: str, task_ids: list[int] | None, from_states: set[str], to: str) -> int:
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
        return {"cancelled": self._set_tasks(job_id, task_ids, {"queued", "running"}, "cancelled")}

    def retry(self, job_id: str, task_ids: list[int] | None = None) -> dict[str, Any]:
        return {"requeued": self._set_tasks(job_id, task_ids, {"failed", "cancelled"}, "queued")}

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
            if task["state"] == "done":
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
                           "state": "running", "worker": w, "error": None, "attempt": 1, "t": now})
            events.append({"kind": "task", "job_id": job["job_id"], "task_id": next_task, "name": "x.jpg",
                           "state": "done", "worker": w, "error": None, "attempt": 1, "t": now})
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
