"""Helpers for the in-process store tests: a fake clock, a store wrapper that checks the
store's invariants after every committed write, and moving a task to a state through
legal transitions only."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.blobs import digest_of
from broker.store import BlobRef, Store
from shared.states import JOB_STATES, TASK_STATES, job_state

EVERYTHING = 1_000_000  # a list_jobs limit larger than any test store


class Clock:
    """An injected clock: time moves only when a test says so."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = 1.0) -> float:
        self.now += seconds
        return self.now


def assert_consistent(store: Store) -> None:
    """The invariants every committed state must keep.

    Per job: the per-state counters equal a recount of its task rows, `total` is its
    number of tasks, `state` is job_state() of the recount, `finished` is set exactly
    when nothing is active. Across jobs: depth, counts(), queued_tasks() and every
    list_jobs state filter agree with the rows.
    """
    jobs, total = store.list_jobs(None, None, EVERYTHING, 0)
    assert total == len(jobs)
    sums: Counter[str] = Counter()
    by_state: dict[str, set[str]] = {s: set() for s in JOB_STATES}
    for job in jobs:
        tasks = store.job_tasks(job["job_id"])
        recount = Counter(t["state"] for t in tasks)
        assert set(recount) <= set(TASK_STATES), recount
        counters = {s: job[s] for s in TASK_STATES}
        assert counters == {s: recount[s] for s in TASK_STATES}, (job["job_id"], counters, dict(recount))
        assert job["total"] == len(tasks)
        assert job["state"] == job_state(recount)
        active = recount["queued"] + recount["running"]
        assert (job["finished"] is None) == bool(active), job
        sums.update(recount)
        by_state[job["state"]].add(job["job_id"])
    assert store.depth == sums["queued"] == store.queued_depth()
    assert len(list(store.queued_tasks())) == sums["queued"]
    assert store.counts() == {"jobs": len(jobs), **{s: sums[s] for s in TASK_STATES}}
    for state, expected in by_state.items():
        listed, n = store.list_jobs(state, None, EVERYTHING, 0)
        assert {j["job_id"] for j in listed} == expected, f"list_jobs(state={state!r})"
        assert n == len(expected), f"list_jobs(state={state!r}) total"


# writes that end with a commit in the wrappers below (recover commits by itself)
_WRITES = frozenset({"add_job", "claim", "complete", "fail", "requeue_lost", "hand_back", "adopt",
                     "cancel", "retry", "set_meta", "recover"})


@dataclass
class Checked:
    """A Store whose writes commit at once and are followed by assert_consistent().

    `q.claim(...)` is `store.claim(...)`, `store.commit()`, then the invariant check;
    reads pass straight through. `q.store` is the bare store, for uncommitted writes.
    """

    store: Store
    clock: Clock
    path: str | Path
    last_changes: list = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)  # what a blob store would hold

    def ref(self, data: bytes) -> BlobRef:
        """Bytes as the store sees them: a digest and a size (kept here, as a blob store would)."""
        digest = digest_of(data)
        self.blobs[digest] = data
        return BlobRef(digest, len(data))

    def stage(self, *, names: list[str], blobs: list[bytes], **kwargs: Any) -> tuple[str, list]:
        """add_job with bytes, uncommitted (as the broker's turn does it)."""
        job_id, tasks, _cached = self.store.add_job(names=names, inputs=[self.ref(b) for b in blobs], **kwargs)
        return job_id, tasks

    def add_job(self, *, names: list[str], blobs: list[bytes], **kwargs: Any) -> tuple[str, list]:
        job_id, tasks, _cached = self.store.add_job(names=names, inputs=[self.ref(b) for b in blobs], **kwargs)
        self.commit()
        return job_id, tasks

    def complete(self, task_id: int, attempt: int, worker: str, data: bytes, ext: str) -> bool:
        done = self.store.complete(task_id, attempt, worker, self.ref(data), ext)
        self.commit()
        return done

    def blob(self, task_id: int, what: str) -> tuple[dict, bytes] | None:
        found = self.store.blob(task_id, what)
        return None if found is None else (found[0], self.blobs[found[1]])

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)
        if name not in _WRITES:
            return method

        def write(*args: Any, **kwargs: Any) -> Any:
            out = method(*args, **kwargs)
            self.commit()
            return out

        return write

    def commit(self) -> list:
        self.last_changes = self.store.commit()
        assert_consistent(self.store)
        return self.last_changes

    def submit(self, n: int = 1, *, tenant: str = "t", priority: int = 0, names: list[str] | None = None,
               processor: str = "noop", options: dict | None = None) -> tuple[str, list[int]]:
        """Add a committed job of `n` tasks; the clock then moves on one second."""
        names = names if names is not None else [f"img{i}.png" for i in range(n)]
        blobs = [f"input of {name}".encode() for name in names]
        job_id, tasks = self.add_job(names=names, blobs=blobs, processor=processor,
                                     options=options or {}, tenant=tenant, priority=priority)
        self.clock.advance()
        return job_id, [t.task_id for t in tasks]

    def task(self, task_id: int) -> dict:
        job_id = self.store.task_job(task_id)
        return next(t for t in self.store.job_tasks(job_id) if t["task_id"] == task_id)


def force(q: Checked, job_id: str, task_id: int, state: str, *, worker: str = "w", via: int = 0) -> None:
    """Move a queued task to `state` through legal transitions only.

    `via` picks among the ways to get there (running -> cancelled instead of
    queued -> cancelled, a quarantine instead of a failed result, a retry first...).
    """
    if via % 2 and state != "queued":
        # a detour first: run it and get it back to queued (a requeue or a hand-back)
        (attempt,) = [c.attempt for c in q.claim([task_id], worker)]
        if via % 4 == 1:
            assert q.requeue_lost(task_id, attempt, worker, "died", max_deaths=99) == "queued"
        else:
            assert q.hand_back(task_id, attempt, worker)
    if state == "queued":
        return
    if state == "cancelled" and via % 3 == 0:
        assert [c[0] for c in q.cancel(job_id, [task_id])] == [task_id]
        return
    (claimed,) = q.claim([task_id], worker)
    if state == "running":
        return
    if state == "done":
        assert q.complete(task_id, claimed.attempt, worker, b"result", "png")
    elif state == "failed":
        if via % 3 == 2:
            assert q.requeue_lost(task_id, claimed.attempt, worker, "died", max_deaths=1) == "failed"
        else:
            assert q.fail(task_id, claimed.attempt, worker, "broken", retry_at=None) == "failed"
    elif state == "cancelled":
        assert [c[0] for c in q.cancel(job_id, [task_id])] == [task_id]
    else:
        raise ValueError(state)
    assert q.task(task_id)["state"] == state


def open_store(path: str | Path, clock: Clock) -> Checked:
    memory = str(path) == ":memory:"
    store = Store(path, clock=clock, synchronous="OFF" if memory else "FULL")
    return Checked(store, clock, path)
