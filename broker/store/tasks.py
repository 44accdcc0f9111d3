"""Task writes: submit, claim, outcomes, re-queues, recovery, cancel and retry.

Every task state change goes through `_transition`: checked against
shared.states.TRANSITIONS, then a compare-and-set on the current state.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from broker.store.base import (
    CANCELLED,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    BlobRef,
    Change,
    Claimed,
    QueuedTask,
    StoreBase,
)
from shared.states import allowed_sources, check_transition


@dataclass(frozen=True)
class Finished:
    """A worker's successful result for one attempt, ready to record."""

    task_id: int
    attempt: int
    result: BlobRef
    ext: str
    model_file: str | None = None


@dataclass(frozen=True)
class QueuedRun:
    """One job's queued tasks: all of an untouched job are the range first..first+count."""

    job_id: str
    tenant: str
    priority: int
    first: int
    count: int  # > 0: every task is queued with no delay, ids first..first+count-1; 0: ask tasks()
    store: Any
    model: str | None = None  # the model its tasks need (rembg), None: any worker

    def tasks(self) -> list[tuple[int, float]]:
        """(task_id, not_before) of each queued task."""
        if self.count:
            return [(task_id, 0.0) for task_id in range(self.first, self.first + self.count)]
        return list(self.store.queued_of(self.job_id))


# processors whose results are worth reusing: same input, options and model file, same pixels
CACHED_PROCESSORS = frozenset({"rembg"})
# processors whose tasks need their model's weights on the worker (broker/scheduler.py)
MODEL_PROCESSORS = frozenset({"rembg"})
_MODEL_PROCESSORS = ", ".join(f"'{p}'" for p in sorted(MODEL_PROCESSORS))


def cache_key(tenant: str, input_digest: str, processor: str, options: dict[str, Any]) -> str:
    """What makes two tasks' results equal (the model file is checked beside it).  Per tenant:
    a hit must never tell one tenant that another uploaded the same photo."""
    spec = json.dumps([tenant, input_digest, processor, options], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(spec.encode()).hexdigest()


class TaskWrites(StoreBase):
    """Everything that moves a task from one state to another."""

    # ------------------------------------------------------------------ submit

    def add_job(
        self,
        *,
        names: Sequence[str],
        inputs: Sequence[BlobRef],
        processor: str,
        options: dict[str, Any],
        tenant: str,
        priority: int,
        use_cache: bool = True,
        model_files: Collection[str] | None = None,
        webhook: str | None = None,
    ) -> tuple[str, list[QueuedTask], int]:
        """Insert a job and its tasks (uncommitted): (job id, queued tasks, tasks answered from the cache).

        A task whose input, processor and options match an earlier rembg result made with an
        acceptable model file (`model_files`: the digests live workers announce; None: any)
        is inserted done, with that result, and never runs."""
        if not names or len(names) != len(inputs):
            raise ValueError(f"a job needs one image per name, at least one (got {len(names)} names, "
                             f"{len(inputs)} images)")
        self._begin()
        now = self._clock()
        job_id = os.urandom(6).hex()  # 48 random bits, as uuid4().hex[:12] gave, without the UUID object
        hits: dict[int, tuple[str, str, int]] = {}
        if use_cache and processor in CACHED_PROCESSORS:
            for i, ref in enumerate(inputs):
                row = self._db.execute(
                    "SELECT c.result_digest, c.ext, c.model_file, b.size FROM cache c "
                    "JOIN blobs b ON b.digest = c.result_digest WHERE c.key = ?",
                    (cache_key(tenant, ref.digest, processor, options),)).fetchone()
                if row and (model_files is None or row[2] is None or row[2] in model_files):
                    hits[i] = (row[0], row[1], row[3])
        total, queued = len(names), len(names) - len(hits)
        first = self._db.execute(
            "INSERT INTO jobs (id, created, tenant, processor, options, model, priority, total, n_queued, n_done, "
            "finished, webhook, delayed, first_task) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, (SELECT COALESCE(MAX(id), 0) + 1 FROM tasks)) "
            "RETURNING first_task",
            (job_id, now, tenant, processor, json.dumps(options), options.get("model"), priority,
             total, queued, len(hits), now if queued == 0 else None, webhook),
        ).fetchone()[0]
        if queued == 0 and webhook:  # every task answered from the cache: the job ends now
            self._enqueue_webhook(job_id, webhook, now)
        rows: list[tuple[Any, ...]] = []
        self._ref_many([*inputs, *(BlobRef(hit[0], hit[2]) for hit in hits.values())], now)
        for i, (name, ref) in enumerate(zip(names, inputs, strict=True)):
            hit = hits.get(i)
            if hit is None:
                rows.append((first + i, job_id, i, name, "queued", now, None, ref.size, ref.digest, None, None,
                             None, 0))
            else:
                rows.append((first + i, job_id, i, name, "done", now, now, ref.size, ref.digest, hit[0], hit[2],
                             hit[1], 1))
        self._db.executemany(
            "INSERT INTO tasks (id, job_id, seq, name, state, created, finished, input_size, input_digest, "
            "result_digest, result_size, result_ext, cached) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self.changes.extend(Change(r[0], job_id, DONE if r[12] else QUEUED) for r in rows)
        self.depth += queued
        if hits:
            self.bump_meta("counter:cache_hits", len(hits))
        return job_id, [QueuedTask(r[0], tenant, priority, 0.0) for r in rows if not r[12]], len(hits)

    # ------------------------------------------------------------------ dispatch & outcomes

    def claim(self, task_ids: Iterable[int], worker: str) -> list[Claimed]:
        """Move queued tasks to running on `worker`; skips any no longer queued."""
        self._begin()
        now = self._clock()
        order = {tid: i for i, tid in reversed(list(enumerate(task_ids)))}  # a duplicate keeps its first place
        # one statement for the batch: a dispatch claims up to dispatch_batch tasks at a time, and
        # per-row statements were a third of the loop's time at full speed
        rows = sorted(self._transition_many(
            order, QUEUED, RUNNING, "attempts = attempts + 1, worker = ?, started = ?, error = NULL",
            (worker, now), "attempts, name, input_digest"), key=lambda row: order[row[0]])
        self._db.executemany(
            "INSERT OR REPLACE INTO attempts (task_id, attempt, worker, started) VALUES (?, ?, ?, ?)",
            [(tid, attempt, worker, now) for tid, _, attempt, _, _ in rows])
        claimed: list[Claimed] = []
        for tid, job_id, attempt, name, digest in rows:
            processor, options = self._job_spec(job_id)
            self._moved(job_id, QUEUED, RUNNING, Change(tid, job_id, RUNNING, worker, None, attempt))
            claimed.append(Claimed(tid, attempt, job_id, name, processor, options, digest))
        return claimed

    def _job_spec(self, job_id: str) -> tuple[str, dict[str, Any]]:
        spec = self._job_cache.get(job_id)
        if spec is None:
            processor, options = self._db.execute(
                "SELECT processor, options FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            spec = self._job_cache[job_id] = (processor, json.loads(options))
            if len(self._job_cache) > 4096:
                self._job_cache.clear()
        return spec

    def _finish_attempt(self, task_id: int, attempt: int, outcome: str, error: str | None) -> None:
        self._db.execute(
            "UPDATE attempts SET finished = ?, outcome = ?, error = ? WHERE task_id = ? AND attempt = ?",
            (self._clock(), outcome, error, task_id, attempt),
        )

    def _transition(
        self, task_id: int, source: str, target: str, sets: str = "", params: tuple[Any, ...] = (),
        where: str = "", wparams: tuple[Any, ...] = (),
    ) -> str | None:
        """The one place task state is written: checked against TRANSITIONS, then a
        compare-and-set on `source`.  Returns the job id, or None if the row had moved on."""
        check_transition(source, target)
        row = self._db.execute(
            f"UPDATE tasks SET state = ?{', ' + sets if sets else ''} WHERE id = ? AND state = ? {where} "
            "RETURNING job_id",
            (target, *params, task_id, source, *wparams),
        ).fetchone()
        return row[0] if row else None

    def _transition_many(self, task_ids: Collection[int], source: str, target: str, sets: str,
                         params: tuple[Any, ...], returning: str) -> list[tuple[Any, ...]]:
        """`_transition` for many rows at once; returns (id, job_id, *returning) of the rows moved."""
        check_transition(source, target)
        return self._rows_in(f"UPDATE tasks SET state = ?, {sets} WHERE id IN ({{keys}}) AND state = ? "
                             f"RETURNING id, job_id, {returning}", list(task_ids), (target, *params), (source,))

    def _transition_each(self, rows: Sequence[tuple[Any, ...]], columns: str, source: str, target: str, sets: str,
                         params: tuple[Any, ...], where: str, wparams: tuple[Any, ...]) -> dict[int, str]:
        """`_transition` for rows that bring their own values: each row is (id, ...) named `columns`,
        read as v.<name> in `sets` and `where`.  Returns {task id: job id} of the rows moved."""
        check_transition(source, target)
        moved: dict[int, str] = {}
        width = len(rows[0]) if rows else 0
        for start in range(0, len(rows), 400):
            chunk = rows[start:start + 400]
            values = ", ".join(["(" + ", ".join("?" * width) + ")"] * len(chunk))
            moved.update(self._db.execute(
                f"WITH v({columns}) AS (VALUES {values}) UPDATE tasks SET state = ?, {sets} FROM v "
                f"WHERE tasks.id = v.id AND tasks.state = ? {where} RETURNING tasks.id, tasks.job_id",
                (*(x for row in chunk for x in row), target, *params, source, *wparams)).fetchall())
        return moved

    _CURRENT = "AND attempts = ? AND worker = ?"  # only the attempt the broker last dispatched

    def complete(self, task_id: int, attempt: int, worker: str, result: BlobRef, ext: str,
                 model_file: str | None = None) -> bool:
        """Record a result if this attempt is the current one on `worker`; else discard it.

        A rembg result also fills the result cache (input, options, model file -> result)."""
        return bool(self.complete_many(worker, [Finished(task_id, attempt, result, ext, model_file)]))

    def complete_many(self, worker: str, results: Sequence[Finished]) -> set[int]:
        """`complete` for a worker's batch of results, in a few statements; returns the tasks recorded."""
        self._begin()
        now = self._clock()
        moved = self._transition_each(
            [(f.task_id, f.attempt, f.ext, f.result.digest, f.result.size) for f in results],
            "id, attempt, ext, digest, size", RUNNING, DONE,
            "finished = ?, result_ext = v.ext, error = NULL, result_digest = v.digest, result_size = v.size", (now,),
            "AND tasks.attempts = v.attempt AND tasks.worker = ?", (worker,))
        done = [f for f in results if f.task_id in moved]
        self._ref_many([f.result for f in done], now)
        for f in done:
            job_id = moved[f.task_id]
            processor, options = self._job_spec(job_id)
            if processor in CACHED_PROCESSORS:
                digest, tenant = self._db.execute(
                    "SELECT t.input_digest, j.tenant FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.id = ?",
                    (f.task_id,)).fetchone()
                self._db.execute(
                    "INSERT OR REPLACE INTO cache (key, result_digest, ext, model_file, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (cache_key(tenant, digest, processor, options), f.result.digest, f.ext, f.model_file, now))
            self._moved(job_id, RUNNING, DONE, Change(f.task_id, job_id, DONE, worker, None, f.attempt))
        self._db.executemany(
            "UPDATE attempts SET finished = ?, outcome = 'done', error = NULL WHERE task_id = ? AND attempt = ?",
            [(now, f.task_id, f.attempt) for f in done])
        return set(moved)

    def fail(self, task_id: int, attempt: int, worker: str, error: str, *, retry_at: float | None) -> str | None:
        """Record a failed attempt: re-queue it at `retry_at`, or fail the task (retry_at None).

        Returns the task's new state, or None if the attempt was stale and ignored.
        """
        self._begin()
        target = QUEUED if retry_at is not None else FAILED
        job_id = self._transition(
            task_id, RUNNING, target, "error = ?, failures = failures + 1, not_before = ?, finished = ?",
            (error, retry_at or 0.0, None if retry_at is not None else self._clock()),
            self._CURRENT, (attempt, worker),
        )
        if job_id is None:
            return None
        if retry_at is not None:  # its tasks no longer all wait from the start: see queued_runs
            self._db.execute("UPDATE jobs SET delayed = 1 WHERE id = ?", (job_id,))
        self._finish_attempt(task_id, attempt, "failed", error)
        self._moved(job_id, RUNNING, target, Change(task_id, job_id, target, worker, error, attempt))
        return target

    def requeue_lost(self, task_id: int, attempt: int, worker: str, reason: str, max_deaths: int) -> str | None:
        """A task's worker died: back to queued, or failed once it has ended `max_deaths` workers.

        Does not spend the task's retry budget (failures); counts worker_deaths instead.
        """
        self._begin()
        row = self._db.execute("SELECT worker_deaths FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            return None
        deaths = row[0] + 1
        if deaths >= max_deaths:
            target, sets = FAILED, "worker_deaths = ?, error = ?, finished = ?"
            error = f"quarantined: {deaths} workers died while running it (last: {reason})"
            params: tuple[Any, ...] = (deaths, error, self._clock())
        else:
            target, sets, error, params = QUEUED, "worker_deaths = ?", reason, (deaths,)
        job_id = self._transition(task_id, RUNNING, target, sets, params, self._CURRENT, (attempt, worker))
        if job_id is None:
            return None
        self._finish_attempt(task_id, attempt, "lost", reason)
        self._moved(job_id, RUNNING, target, Change(task_id, job_id, target, worker, error, attempt))
        return target

    def hand_back(self, task_id: int, attempt: int, worker: str) -> bool:
        """A draining worker returned a task it had not finished: re-queue, costing nothing."""
        self._begin()
        job_id = self._transition(
            task_id, RUNNING, QUEUED, "attempts = attempts - 1, started = NULL",
            (), self._CURRENT, (attempt, worker),
        )
        if job_id is None:
            return False
        self._db.execute("DELETE FROM attempts WHERE task_id = ? AND attempt = ?", (task_id, attempt))
        self._moved(job_id, RUNNING, QUEUED, Change(task_id, job_id, QUEUED, worker, None, attempt))
        return True

    def adopt(self, task_id: int, attempt: int, worker: str) -> bool:
        """After a broker restart, take back a task its worker still runs (same attempt)."""
        self._begin()
        job_id = self._transition(task_id, QUEUED, RUNNING, "", (), self._CURRENT, (attempt, worker))
        if job_id is None:
            return False
        self._moved(job_id, QUEUED, RUNNING, Change(task_id, job_id, RUNNING, worker, None, attempt))
        return True

    def recover(self) -> int:
        """At start-up: tasks left running by a previous broker go back to queued."""
        self._begin()
        rows = self._db.execute("SELECT id, attempts, worker FROM tasks WHERE state = 'running'").fetchall()
        for tid, attempt, worker in rows:
            job_id = self._transition(tid, RUNNING, QUEUED)
            if job_id is not None:
                # close the interrupted attempt; if its worker re-announces it, adoption and its
                # result rewrite this row to 'done'
                self._finish_attempt(tid, attempt, "lost", "broker restarted")
                self._moved(job_id, RUNNING, QUEUED,
                            Change(tid, job_id, QUEUED, worker, "broker restarted", attempt))
        self.commit()
        return len(rows)

    def queued_tasks(self) -> Iterator[QueuedTask]:
        """Every queued task, in submission order, streamed (job by job)."""
        for run in self.queued_runs():
            for task_id, not_before in run.tasks():
                yield QueuedTask(task_id, run.tenant, run.priority, not_before)

    def queued_runs(self) -> Iterator[QueuedRun]:
        """Each job with queued tasks, in submission order: what the scheduler is rebuilt from."""
        rows = self._db.execute(
            "SELECT id, tenant, priority, first_task, total, n_queued, delayed, "
            f"CASE WHEN processor IN ({_MODEL_PROCESSORS}) THEN model END "
            "FROM jobs INDEXED BY jobs_queued WHERE n_queued > 0 ORDER BY first_task")
        for job_id, tenant, priority, first, total, queued, delayed, model in rows:
            whole = queued == total and not delayed
            yield QueuedRun(job_id, tenant, priority, first, total if whole else 0, self, model)

    def queued_of(self, job_id: str) -> list[tuple[int, float]]:
        """(task_id, not_before) of a job's queued tasks, in id order."""
        return self._db.execute(
            "SELECT id, not_before FROM tasks INDEXED BY tasks_job WHERE job_id = ? AND state = 'queued' "
            "ORDER BY seq", (job_id,)).fetchall()

    def running_tasks(self) -> list[tuple[int, int, str | None, str]]:
        """(task_id, attempt, worker, tenant) of every running task: bounded by the slots in use."""
        return self._db.execute(
            "SELECT t.id, t.attempts, t.worker, j.tenant FROM tasks t JOIN jobs j ON j.id = t.job_id "
            "WHERE t.state = 'running'"
        ).fetchall()

    # ------------------------------------------------------------------ cancel & retry

    def _select_tasks(self, job_id: str, task_ids: list[int] | None, states: Sequence[str]) -> list[tuple[Any, ...]]:
        marks = ",".join("?" * len(states))
        sql = f"SELECT id, state, attempts, worker FROM tasks WHERE job_id = ? AND state IN ({marks})"
        params: list[Any] = [job_id, *states]
        if task_ids is not None:
            sql += f" AND id IN ({','.join('?' * len(task_ids))})"
            params += list(task_ids)
        return self._db.execute(sql, params).fetchall()

    def cancel(self, job_id: str, task_ids: list[int] | None = None) -> list[tuple[int, int, str | None, str]]:
        """Cancel a job's queued and running tasks; returns (task_id, attempt, worker, old_state)."""
        self._begin()
        out = []
        for tid, state, attempt, worker in self._select_tasks(job_id, task_ids, allowed_sources(CANCELLED)):
            if self._transition(tid, state, CANCELLED, "finished = ?", (self._clock(),)) is None:
                continue
            if state == RUNNING:
                self._finish_attempt(tid, attempt, "cancelled", None)
            self._moved(job_id, state, CANCELLED, Change(tid, job_id, CANCELLED, worker, None, attempt))
            out.append((tid, attempt, worker, state))
        return out

    def retry(self, job_id: str, task_ids: list[int] | None = None) -> list[QueuedTask]:
        """Re-queue a job's failed and cancelled tasks, with a fresh retry budget."""
        self._begin()
        tenant, priority = self._db.execute("SELECT tenant, priority FROM jobs WHERE id = ?", (job_id,)).fetchone()
        out = []
        for tid, state, attempt, _worker in self._select_tasks(job_id, task_ids, allowed_sources(QUEUED)):
            if state == RUNNING:
                continue  # running -> queued is a requeue, not something a user asks for
            sets = "failures = 0, worker_deaths = 0, not_before = 0, finished = NULL"
            if self._transition(tid, state, QUEUED, sets) is None:
                continue
            self._moved(job_id, state, QUEUED, Change(tid, job_id, QUEUED, None, None, attempt))
            out.append(QueuedTask(tid, tenant, priority, 0.0))
        return out

