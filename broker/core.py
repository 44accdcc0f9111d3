"""The broker's state and the operations both kinds of handlers share.

Queue, workers, throughput and this turn's outbox live here; so do the moves that
touch several of them at once (dispatch, a worker lost, a task re-queued), each
written once.  No sockets: the server sends what the outbox holds after commit.
"""

from __future__ import annotations

import json
import logging
import mmap
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from broker.blobio import BlobIO
from broker.blobs import BlobStore, digest_of
from broker.logs import Throttle
from broker.outbox import Outbox
from broker.rates import Throughput
from broker.registry import Registry, WorkerRecord
from broker.scheduler import Scheduler, TenantPolicy
from broker.store import MODEL_PROCESSORS, BlobRef, Claimed, Store
from shared.config import BrokerConfig
from shared.states import TaskState

if TYPE_CHECKING:
    from broker.metrics import Metrics

log = logging.getLogger("cutq.broker")
INLINE_TOTAL_BYTES = 1 << 20  # small images of one submission kept in the database, at most: hashed on the loop


def needed_model(processor: str, options: dict[str, Any] | None = None, model: Any = None) -> str | None:
    """The model a task needs on its worker: a rembg task's (from its options or the job's `model`
    column); None for processors that need none (noop, sleep)."""
    if processor not in MODEL_PROCESSORS:
        return None
    found = (options or {}).get("model", model)
    return str(found) if found is not None else None


def serves(w: WorkerRecord) -> frozenset[str]:
    """Models `w` can run: weights in its model dir (`model_files`) or loaded (`models`)."""
    return frozenset(w.model_files).union(w.models)


@dataclass
class Upload:
    """A streamed submission in progress: its durable parts, by the client's part number."""

    user: str
    tenant: str | None
    last_seen: float
    parts: dict[int, tuple[list[str], list[BlobRef]]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(len(names) for names, _ in self.parts.values())

    def joined(self) -> tuple[list[str], list[BlobRef]]:
        names: list[str] = []
        refs: list[BlobRef] = []
        for part in sorted(self.parts):
            names += self.parts[part][0]
            refs += self.parts[part][1]
        return names, refs


Redo = Callable[[], None]


class Core:
    """What the broker knows, and the moves that change several parts of it together."""

    def __init__(
        self,
        config: BrokerConfig,
        store: Store,
        blobs: BlobStore,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.blobs = blobs
        self.blobio = BlobIO(blobs)
        self.uploads: dict[str, Upload] = {}
        # closures whose store writes belong to this turn: run again if its commit fails
        self.redoable: list[Redo] = []
        # closures to run on the next turn that may write (a blob write failed: disk full)
        self.deferred: list[Redo] = []
        self.trouble: str | None = None  # a storage error outside the store (a blob write) this turn
        self.metrics: Metrics | None = None  # set by the server when --metrics is on
        self.clock, self.wall = clock, wall
        self.registry = Registry()
        self.scheduler = Scheduler()
        self.rates = Throughput()
        self.out = Outbox()
        self.running_tenant: dict[int, str] = {}  # task_id -> tenant, for running tasks
        self.warnings = Throttle(log)
        self.orphans: list[tuple[int, int, str]] = []  # (task, attempt, worker) to re-queue
        # silence is measured up to the last time the socket was read empty: a worker whose
        # heartbeat waits unread behind a slow turn is not dead
        self.drained_at = clock()

    # ------------------------------------------------------------------ loading

    def load(self) -> int:
        """At start-up: re-queue what a previous broker left running, then load policies and queue."""
        recovered = self.store.recover()
        for key, value in self.store.meta_items("tenant:").items():
            self.scheduler.policies[key.split(":", 1)[1]] = TenantPolicy(**json.loads(value))
        self.load_queue()
        return recovered

    def load_queue(self) -> None:
        """Rebuild the scheduler from the queued rows and the persisted pause flags."""
        self.scheduler = Scheduler(self.scheduler.policies)
        self.scheduler.load(self.store.queued_runs(), self.wall())
        flags = self.store.meta_items("paused:")
        self.scheduler.paused_all = flags.get("paused:*") == "1"
        self.scheduler.paused = {k.split(":", 1)[1] for k, v in flags.items() if v == "1" and k != "paused:*"}

    def resync(self) -> None:
        """After a rolled-back turn: make memory agree with the database again.

        The queue is rebuilt from its rows; each live worker holds exactly the tasks the
        database says it runs; tasks the database still gives to a worker that memory has
        declared gone are re-queued by the next turn that can write (`requeue_orphans`).
        """
        self.load_queue()
        self.running_tenant.clear()
        alive = {w.ident.decode(errors="replace"): w for w in self.registry.alive()}
        for w in alive.values():
            w.running.clear()
        self.orphans = []
        for task_id, attempt, worker, tenant in self.store.running_tasks():
            holder = alive.get(worker or "")
            if holder is None:
                self.orphans.append((task_id, attempt, worker or ""))
                continue
            holder.running[task_id] = attempt
            self.running_tenant[task_id] = tenant

    def requeue_orphans(self) -> None:
        """Re-queue tasks left on workers that were declared gone in a turn that was rolled back."""
        orphans, self.orphans = self.orphans, []
        for task_id, attempt, worker in orphans:
            new = self.store.requeue_lost(task_id, attempt, worker, f"worker {worker} lost",
                                          self.config.max_worker_deaths)
            if new == TaskState.QUEUED:
                self.requeue_in_memory(task_id)

    def blob(self, digest: str) -> bytes | mmap.mmap:
        """A blob's bytes: kept in the database (a small one), else a read-only map of its file, which
        ZeroMQ sends without the loop copying it.  OSError or ValueError when it is missing."""
        data = self.store.inline_blob(digest)
        return data if data is not None else self.blobs.get(digest)

    def inline_refs(self, blobs: list[bytes]) -> list[BlobRef] | None:
        """Refs that keep `blobs` in the database, when every one is small and all of them together
        are too (hashed here, on the loop); None: they go to files, written on threads."""
        limit = self.config.inline_blob_bytes
        if not limit or any(len(b) > limit for b in blobs) or sum(map(len, blobs)) > INLINE_TOTAL_BYTES:
            return None
        return [BlobRef(digest_of(b), len(b), bytes(b)) for b in blobs]

    def storage_trouble(self, reason: str) -> None:
        """A blob write failed: the server backs off its own writes as after a failed commit."""
        self.trouble = reason

    # ------------------------------------------------------------------ tasks

    def requeue_in_memory(self, task_id: int, not_before: float = 0.0) -> None:
        """Put a task the store just re-queued back into the scheduler, in its original place."""
        job_id = self.store.task_job(task_id)
        job = self.store.job(job_id) if job_id else None
        if job is not None:
            self.scheduler.push(task_id, job["tenant"], job["priority"], not_before, self.wall(),
                                needed_model(job["processor"], model=job["model"]))

    def release(self, w: WorkerRecord, task_id: int) -> str | None:
        """The task no longer runs on `w`; returns its tenant."""
        w.running.pop(task_id, None)
        return self.running_tenant.pop(task_id, None)

    def record_failure(self, task_id: int, attempt: int, worker_id: str, error: str, kind: str) -> None:
        """A worker reported a failed attempt: retry after backoff, or fail the task for good."""
        retry_at = None
        if kind != "input":
            failures = self.store.task_failures(task_id)
            if failures + 1 < self.config.max_attempts:
                delay = min(self.config.retry_backoff * (2 ** failures), self.config.retry_backoff_max)
                retry_at = self.wall() + delay * random.uniform(0.5, 1.5)
                error = f"{error} (attempt {failures + 1} of {self.config.max_attempts}, retrying)"
            else:
                error = f"{error} (gave up after {failures + 1} attempts)"
        state = self.store.fail(task_id, attempt, worker_id, error, retry_at=retry_at)
        if self.metrics is not None and state is not None:
            self.metrics.finished.labels("failed").inc()
            if state == TaskState.QUEUED:
                self.metrics.retried.inc()
        if state == TaskState.QUEUED:
            self.requeue_in_memory(task_id, retry_at or 0.0)

    def hand_back(self, w: WorkerRecord, task_id: int, attempt: int) -> None:
        """`w` returns a task unfinished through no fault of its own: re-queue it unspent."""
        self.release(w, task_id)
        if self.store.hand_back(task_id, attempt, w.ident.decode(errors="replace")):
            self.requeue_in_memory(task_id)

    def delete_job(self, job_id: str, reason: str) -> None:
        """Remove a job with its rows; stop what of it still runs; its blobs go after commit."""
        job = self.store.job(job_id)
        if job is not None and job["queued"]:
            self.scheduler.remove(job["tenant"], job["priority"], self.store.queued_ids(job_id))
        for task_id, _attempt, worker in self.store.delete_job(job_id, reason) or []:
            w = self.registry.get_alive(worker.encode()) if worker else None
            if w is not None and task_id in w.running:
                self.release(w, task_id)
                self.out.cancels[w.ident].append(task_id)
        self.out.worker_events.append({"kind": "job_deleted", "job_id": job_id, "reason": reason})

    def expire_step(self, limit: int = 200) -> int:
        """Delete up to `limit` finished jobs older than the retention (a little each second)."""
        retention = self.config.retention_s
        if retention <= 0:
            return 0
        ids = self.store.expired_jobs(self.wall() - retention, limit)
        for job_id in ids:
            self.delete_job(job_id, f"expired ({_duration(retention)} after it finished)")
        if ids:
            self.store.forget_tombstones(self.wall() - max(retention, 7 * 86400.0))
        return len(ids)

    # ------------------------------------------------------------------ workers

    def lose_worker(self, w: WorkerRecord, reason: str, state: str = "dead") -> None:
        """Declare a worker gone: its tasks go back to the queue (or quarantine)."""
        if w.running or state == "dead":
            log.warning("worker %s (%s pid %d) %s: %s; re-queueing %d tasks",
                        w.name, w.host, w.pid, state, reason, len(w.running))
        w.state = state
        for task_id, attempt in list(w.running.items()):
            self.release(w, task_id)
            new = self.store.requeue_lost(task_id, attempt, w.ident.decode(errors="replace"),
                                          f"worker {w.name} lost: {reason}", self.config.max_worker_deaths)
            if new is not None and self.metrics is not None:
                self.metrics.finished.labels("lost").inc()
            if new == TaskState.QUEUED:
                self.requeue_in_memory(task_id)
        self.out.worker_events.append({"kind": "worker", "worker": w.name, "state": state, "reason": reason})

    def purge_dead(self) -> None:
        """Declare dead every worker silent for longer than the liveness window.

        Silence ends at the last moment the socket was read empty, so a slow turn (a
        big submission) never kills a worker whose heartbeat is still waiting unread.
        """
        timeout = self.config.heartbeat_interval * self.config.heartbeat_liveness
        for w in self.registry.expired(self.drained_at, timeout):
            self.lose_worker(w, f"no heartbeat for {self.drained_at - w.last_seen:.1f}s")

    def drop_workers_of(self, revoked: Callable[[str], bool]) -> None:
        """A worker whose key was revoked gets nothing more; what it holds goes back to the queue."""
        for w in self.registry.alive():
            if revoked(w.user):
                self.lose_worker(w, f"its key {w.user!r} was revoked")

    # ------------------------------------------------------------------ dispatch

    def dispatch(self) -> None:
        """Claim queued tasks for free slots, largest free first, fairly across tenants.

        A task that needs a model goes only to a worker that serves it; first to one that
        has it loaded (or to any that serves it when no live worker has it loaded), then,
        with the slots still free, to any worker that serves it.  The scheduler pops only
        tasks the asking worker can run, so an unservable task stays queued in its place."""
        sched = self.scheduler
        if not sched.ready():
            return
        workers = sorted((w for w in self.registry.alive() if w.free > 0), key=lambda w: -w.free)
        if not workers:
            return
        now = self.clock()
        running = Counter(self.running_tenant.values())
        if not sched.needs_models():  # every queued task runs anywhere: no filter
            self._fill([(w, None) for w in workers], now, running)
            return
        loaded = {m for w in self.registry.alive() if not w.draining for m in w.models}
        able = [(w, serves(w)) for w in workers]
        self._fill([(w, frozenset(w.models).union(can - loaded)) for w, can in able], now, running)
        self._fill([(w, can) for w, can in able if w.free > 0], now, running)

    def _fill(self, offers: list[tuple[WorkerRecord, frozenset[str] | None]], now: float,
              running: Counter[str]) -> None:
        """Pop for each worker what it may take (`None`: anything) until slots or tasks run out."""
        batch = self.config.dispatch_batch
        while offers and self.scheduler.ready():
            progressed = False
            for w, models in offers:
                want = min(w.free, batch)
                picked = self.scheduler.pop(want, now, running, models) if want > 0 else []
                if picked:
                    progressed = True
                    self._send_to(w, picked, running)
            offers = [(w, m) for w, m in offers if w.free > 0]
            if not progressed:
                break

    def _send_to(self, w: WorkerRecord, picked: list[tuple[int, str]], running: Counter[str]) -> None:
        """Claim `picked` for `w` and put them in its next Dispatch (those still queued)."""
        tenant_of = dict(picked)
        worker_id = w.ident.decode(errors="replace")
        sending: list[tuple[Claimed, Any]] = []
        claimed = self.store.claim([tid for tid, _ in picked], worker_id)
        inline = self.store.inline_blobs({c.input_digest for c in claimed})
        for c in claimed:
            try:
                data = inline[c.input_digest] if c.input_digest in inline else self.blobs.get(c.input_digest)
            except (OSError, ValueError) as e:
                self.store.fail(c.task_id, c.attempt, worker_id, f"input image is missing: {e}", retry_at=None)
                continue
            w.running[c.task_id] = c.attempt
            self.running_tenant[c.task_id] = tenant_of[c.task_id]
            running[tenant_of[c.task_id]] += 1
            model = needed_model(c.processor, c.options)
            if model is not None and model not in w.models:
                w.models.append(model)  # a slot loads it for this task: prefer this worker for its like
            sending.append((c, data))
        if sending:
            self.out.dispatches.append((w, sending))


def _duration(seconds: float) -> str:
    """3600 -> '1h', 90 -> '90s': how the retention was given."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
