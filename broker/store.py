"""All of cutq's SQL: the durable queue in one SQLite (WAL) file.

Every task state change is a compare-and-set (`... WHERE state IN (allowed sources)`)
checked against shared.states.TRANSITIONS.  Writes are grouped: the broker calls
`commit()` once per loop turn (group commit), and only then answers clients.
Images live here too, as blobs, so a submission's inputs and its rows commit in
one transaction (see docs/ARCHITECTURE.md for why not files).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.states import TASK_STATES, TaskState, allowed_sources, check_transition, job_state

QUEUED, RUNNING, DONE, FAILED, CANCELLED = (TaskState.QUEUED, TaskState.RUNNING, TaskState.DONE,
                                             TaskState.FAILED, TaskState.CANCELLED)

SCHEMA_VERSION = 1

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        created REAL NOT NULL,
        tenant TEXT NOT NULL,
        processor TEXT NOT NULL,
        options TEXT NOT NULL,
        model TEXT,
        priority INTEGER NOT NULL DEFAULT 0,
        total INTEGER NOT NULL,
        n_queued INTEGER NOT NULL DEFAULT 0,
        n_running INTEGER NOT NULL DEFAULT 0,
        n_done INTEGER NOT NULL DEFAULT 0,
        n_failed INTEGER NOT NULL DEFAULT 0,
        n_cancelled INTEGER NOT NULL DEFAULT 0,
        finished REAL
    );
    CREATE INDEX jobs_created ON jobs(created);
    CREATE INDEX jobs_tenant ON jobs(tenant);
    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0,
        worker_deaths INTEGER NOT NULL DEFAULT 0,
        worker TEXT,
        error TEXT,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        not_before REAL NOT NULL DEFAULT 0,
        input_size INTEGER NOT NULL,
        result_ext TEXT
    );
    CREATE INDEX tasks_job ON tasks(job_id, seq);
    CREATE INDEX tasks_state ON tasks(state);
    CREATE INDEX tasks_name ON tasks(name);
    CREATE TABLE inputs (task_id INTEGER PRIMARY KEY, data BLOB NOT NULL);
    CREATE TABLE results (task_id INTEGER PRIMARY KEY, data BLOB NOT NULL);
    CREATE TABLE attempts (
        task_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        worker TEXT NOT NULL,
        started REAL NOT NULL,
        finished REAL,
        outcome TEXT,
        error TEXT,
        PRIMARY KEY (task_id, attempt)
    );
    """,
}

_COUNT_COLUMNS = {s: f"n_{s}" for s in TASK_STATES}
_JOB_COLUMNS = (
    "id, created, tenant, processor, options, model, priority, total, "
    "n_queued, n_running, n_done, n_failed, n_cancelled, finished"
)
_TASK_COLUMNS = (
    "id, job_id, name, state, attempts, worker, error, created, started, finished, "
    "result_ext, input_size, failures, worker_deaths, seq"
)


class StoreError(Exception):
    """The database refused a read or write (disk full, read-only, locked, corrupt...).

    The only error that leaves this module: nothing outside it knows SQLite.
    """


class _Connection:
    """sqlite3.Connection whose errors surface as StoreError, so callers catch one type."""

    def __init__(self, path: str) -> None:
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"could not open {path}: {e}") from e
        self.path = path

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as e:
            raise StoreError(f"{e} (database {self.path})") from e

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> sqlite3.Cursor:
        try:
            return self._db.executemany(sql, rows)
        except sqlite3.Error as e:
            raise StoreError(f"{e} (database {self.path})") from e

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True)
class QueuedTask:
    """What the scheduler needs to know about a queued task."""

    task_id: int
    tenant: str
    priority: int
    not_before: float


@dataclass(frozen=True)
class Claimed:
    """A task just moved to running, with what a worker needs to run it."""

    task_id: int
    attempt: int
    job_id: str
    name: str
    processor: str
    options: dict[str, Any]
    data: bytes


@dataclass(frozen=True)
class Change:
    """One committed-to-be task state change, for events."""

    task_id: int
    job_id: str
    state: str
    worker: str | None = None
    error: str | None = None
    attempt: int = 0


class Store:
    """The queue's durable state.  Not thread-safe: the broker loop owns it."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = str(path)
        self._clock = clock
        self._db = _Connection(self.path)
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if self.path != ":memory:":
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"could not switch {self.path} to WAL (got {mode})")
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"bad synchronous setting {synchronous!r}")
        self._db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        self._migrate()
        self._in_tx = False
        self._deltas: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.changes: list[Change] = []
        self._job_cache: dict[str, tuple[str, dict[str, Any]]] = {}
        self.depth = self.queued_depth()  # queued tasks, kept in step by every write

    # ------------------------------------------------------------------ schema & transactions

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        for target in sorted(v for v in _MIGRATIONS if v > version):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _MIGRATIONS[target].split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                self._db.execute(f"PRAGMA user_version = {target}")
                self._db.execute("COMMIT")
            except Exception:
                self._db.execute("ROLLBACK")
                raise

    def _begin(self) -> None:
        if not self._in_tx:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except StoreError as e:
                raise StoreError(f"could not start a write: {e}") from e
            self._in_tx = True

    def commit(self) -> list[Change]:
        """Make this turn's writes durable; return the task changes they made.

        Raises StoreError (after rolling back) if SQLite refuses; the caller must then
        answer the turn's requests with an error instead of an acknowledgement.
        """
        if not self._in_tx:
            return []
        try:
            self._flush_deltas()
            self._db.execute("COMMIT")
        except StoreError as e:
            self.rollback()
            raise StoreError(f"could not commit: {e}") from e
        self._in_tx = False
        changes, self.changes = self.changes, []
        return changes

    def rollback(self) -> None:
        """Drop this turn's uncommitted writes."""
        if self._in_tx:
            try:
                self._db.execute("ROLLBACK")
            except StoreError:
                pass
        self._in_tx = False
        self._deltas.clear()
        self.changes = []
        self._job_cache.clear()
        self.depth = self.queued_depth()

    def close(self) -> None:
        """Commit anything pending and close; checkpoints the WAL."""
        if self._in_tx:
            self.commit()
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()

    def _flush_deltas(self) -> None:
        now = self._clock()
        for job_id, delta in self._deltas.items():
            sets = ", ".join(f"{_COUNT_COLUMNS[s]} = {_COUNT_COLUMNS[s]} + ?" for s in delta)
            self._db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*delta.values(), job_id))
            # finished is set when the last active task ends, cleared when work comes back
            self._db.execute(
                "UPDATE jobs SET finished = CASE WHEN n_queued + n_running = 0 THEN COALESCE(finished, ?) "
                "ELSE NULL END WHERE id = ?",
                (now, job_id),
            )
        self._deltas.clear()

    def _moved(self, job_id: str, old: str, new: str, change: Change) -> None:
        d = self._deltas[job_id]
        d[old] -= 1
        d[new] += 1
        self.depth += (new == QUEUED) - (old == QUEUED)
        self.changes.append(change)

    # ------------------------------------------------------------------ meta (pause flags)

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self._begin()
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def meta_items(self, prefix: str) -> dict[str, str]:
        rows = self._db.execute("SELECT key, value FROM meta WHERE key LIKE ?", (prefix + "%",))
        return dict(rows.fetchall())

    # ------------------------------------------------------------------ submit

    def add_job(
        self,
        *,
        names: Sequence[str],
        blobs: Sequence[bytes],
        processor: str,
        options: dict[str, Any],
        tenant: str,
        priority: int,
    ) -> tuple[str, list[QueuedTask]]:
        """Insert a job and its queued tasks (uncommitted); returns the id and the tasks."""
        self._begin()
        now = self._clock()
        job_id = uuid.uuid4().hex[:12]
        self._db.execute(
            "INSERT INTO jobs (id, created, tenant, processor, options, model, priority, total, n_queued) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, now, tenant, processor, json.dumps(options), options.get("model"), priority,
             len(names), len(names)),
        )
        first = self._db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM tasks").fetchone()[0]
        ids = range(first, first + len(names))
        self._db.executemany(
            "INSERT INTO tasks (id, job_id, seq, name, state, created, input_size) VALUES (?, ?, ?, ?, 'queued', ?, ?)",
            [(tid, job_id, i, name, now, len(blob)) for i, (tid, name, blob) in enumerate(zip(ids, names, blobs))],
        )
        self._db.executemany("INSERT INTO inputs (task_id, data) VALUES (?, ?)", zip(ids, blobs))
        self.changes.extend(Change(tid, job_id, QUEUED) for tid in ids)
        self.depth += len(names)
        return job_id, [QueuedTask(tid, tenant, priority, 0.0) for tid in ids]

    def queued_depth(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM tasks WHERE state = 'queued'").fetchone()[0])

    # ------------------------------------------------------------------ dispatch & outcomes

    def claim(self, task_ids: Iterable[int], worker: str) -> list[Claimed]:
        """Move queued tasks to running on `worker`; skips any no longer queued."""
        self._begin()
        now = self._clock()
        claimed: list[Claimed] = []
        for tid in task_ids:
            job_id = self._transition(
                tid, QUEUED, RUNNING, "attempts = attempts + 1, worker = ?, started = ?, error = NULL",
                (worker, now),
            )
            if job_id is None:
                continue
            attempt, name = self._db.execute("SELECT attempts, name FROM tasks WHERE id = ?", (tid,)).fetchone()
            processor, options = self._job_spec(job_id)
            data = self._db.execute("SELECT data FROM inputs WHERE task_id = ?", (tid,)).fetchone()[0]
            self._db.execute(
                "INSERT OR REPLACE INTO attempts (task_id, attempt, worker, started) VALUES (?, ?, ?, ?)",
                (tid, attempt, worker, now),
            )
            self._moved(job_id, QUEUED, RUNNING, Change(tid, job_id, RUNNING, worker, None, attempt))
            claimed.append(Claimed(tid, attempt, job_id, name, processor, options, data))
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

    _CURRENT = "AND attempts = ? AND worker = ?"  # only the attempt the broker last dispatched

    def complete(self, task_id: int, attempt: int, worker: str, data: bytes, ext: str) -> bool:
        """Record a result if this attempt is the current one on `worker`; else discard it."""
        self._begin()
        job_id = self._transition(
            task_id, RUNNING, DONE, "finished = ?, result_ext = ?, error = NULL",
            (self._clock(), ext), self._CURRENT, (attempt, worker),
        )
        if job_id is None:
            return False
        self._db.execute("INSERT OR REPLACE INTO results (task_id, data) VALUES (?, ?)", (task_id, data))
        self._finish_attempt(task_id, attempt, "done", None)
        self._moved(job_id, RUNNING, DONE, Change(task_id, job_id, DONE, worker, None, attempt))
        return True

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

    def queued_tasks(self) -> list[QueuedTask]:
        """Every queued task, in submission order, to rebuild the scheduler at start-up."""
        rows = self._db.execute(
            "SELECT t.id, j.tenant, j.priority, t.not_before FROM tasks t JOIN jobs j ON j.id = t.job_id "
            "WHERE t.state = 'queued' ORDER BY t.id"
        )
        return [QueuedTask(*r) for r in rows]

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
        for tid, state, attempt, worker in self._select_tasks(job_id, task_ids, allowed_sources(QUEUED)):
            if state == RUNNING:
                continue  # running -> queued is a requeue, not something a user asks for
            sets = "failures = 0, worker_deaths = 0, not_before = 0, finished = NULL"
            if self._transition(tid, state, QUEUED, sets) is None:
                continue
            self._moved(job_id, state, QUEUED, Change(tid, job_id, QUEUED, None, None, attempt))
            out.append(QueuedTask(tid, tenant, priority, 0.0))
        return out

    # ------------------------------------------------------------------ reads

    def job_exists(self, job_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None

    def job(self, job_id: str) -> dict[str, Any] | None:
        row = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job_dict(row) if row else None

    def job_tasks(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE job_id = ? ORDER BY seq", (job_id,))
        return [_task_dict(r) for r in rows]

    def task_attempts(self, task_id: int) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT attempt, worker, started, finished, outcome, error FROM attempts WHERE task_id = ? ORDER BY attempt",
            (task_id,),
        )
        keys = ("attempt", "worker", "started", "finished", "outcome", "error")
        return [dict(zip(keys, r)) for r in rows]

    def list_jobs(
        self, state: str | None, search: str | None, limit: int, offset: int, tenant: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of jobs, newest first, filtered by derived state, tenant and id/file-name search."""
        where, params = [], []
        if state:
            where.append(_STATE_SQL[state])
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        if search:
            where.append("(id LIKE ? OR id IN (SELECT job_id FROM tasks WHERE name LIKE ?))")
            params += [search + "%", "%" + search + "%"]
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        total = self._db.execute(f"SELECT COUNT(*) FROM jobs {clause}", params).fetchone()[0]
        rows = self._db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs {clause} ORDER BY created DESC, rowid DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        ).fetchall()
        return [_job_dict(r) for r in rows], total

    def tenant_queued(self, tenant: str) -> int:
        row = self._db.execute("SELECT COALESCE(SUM(n_queued), 0) FROM jobs WHERE tenant = ?", (tenant,)).fetchone()
        return int(row[0])

    def queue_position(self, job_id: str) -> int:
        """Queued tasks of the same tenant that dispatch before this job's first queued task."""
        row = self._db.execute(
            "SELECT j.tenant, j.priority, MIN(t.id) FROM jobs j JOIN tasks t ON t.job_id = j.id "
            "WHERE j.id = ? AND t.state = 'queued'", (job_id,),
        ).fetchone()
        if row is None or row[2] is None:
            return 0
        tenant, priority, first = row
        return int(self._db.execute(
            "SELECT COUNT(*) FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.state = 'queued' "
            "AND j.tenant = ? AND (j.priority > ? OR (j.priority = ? AND t.id < ?))",
            (tenant, priority, priority, first),
        ).fetchone()[0])

    def counts(self) -> dict[str, int]:
        """Task counts by state across all jobs."""
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(n_queued),0), COALESCE(SUM(n_running),0), COALESCE(SUM(n_done),0), "
            "COALESCE(SUM(n_failed),0), COALESCE(SUM(n_cancelled),0) FROM jobs"
        ).fetchone()
        return {"jobs": row[0], **dict(zip(TASK_STATES, row[1:]))}

    def counts_by_tenant(self, active_only: bool = False) -> dict[str, dict[str, int]]:
        """Task counts by state for each tenant (only those with queued work, if asked)."""
        rows = self._db.execute(
            "SELECT tenant, SUM(n_queued), SUM(n_running), SUM(n_done), SUM(n_failed), SUM(n_cancelled) "
            "FROM jobs GROUP BY tenant" + (" HAVING SUM(n_queued) > 0" if active_only else "")
        )
        return {r[0]: dict(zip(TASK_STATES, r[1:])) for r in rows}

    def blob(self, task_id: int, what: str) -> tuple[dict[str, Any], bytes] | None:
        """A task's result or input bytes with its name and extension."""
        table = {"result": "results", "input": "inputs"}[what]
        row = self._db.execute(
            f"SELECT t.name, t.job_id, t.result_ext, t.state, j.tenant, b.data FROM tasks t "
            f"JOIN {table} b ON b.task_id = t.id JOIN jobs j ON j.id = t.job_id WHERE t.id = ?",
            (task_id,),
        ).fetchone()
        if row is None:
            return None
        name, job_id, ext, state, tenant, data = row
        if what == "input":
            ext = Path(name).suffix.lstrip(".") or "bin"
        return {"task_id": task_id, "job_id": job_id, "name": name, "ext": ext, "state": state, "tenant": tenant}, data

    def task_failures(self, task_id: int) -> int:
        row = self._db.execute("SELECT failures FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return row[0] if row else 0

    def task_job(self, task_id: int) -> str | None:
        row = self._db.execute("SELECT job_id FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return row[0] if row else None


_STATE_SQL = {
    "queued": "n_queued = total",
    "running": "(n_queued + n_running > 0 AND n_queued < total)",
    "done": "n_done = total",
    "failed": "(n_queued + n_running = 0 AND n_failed > 0)",
    "cancelled": "(n_queued + n_running = 0 AND n_failed = 0 AND n_cancelled > 0)",
}


def _job_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    (job_id, created, tenant, processor, options, model, priority, total,
     nq, nr, nd, nf, nc, finished) = row
    counts = {"queued": nq, "running": nr, "done": nd, "failed": nf, "cancelled": nc}
    return {
        "job_id": job_id, "created": created, "tenant": tenant, "processor": processor,
        "options": json.loads(options), "model": model, "priority": priority, "total": total,
        **counts, "state": job_state(counts), "finished": finished, "errors": nf,
    }


def _task_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    keys = ("task_id", "job_id", "name", "state", "attempts", "worker", "error", "created", "started",
            "finished", "result_ext", "input_size", "failures", "worker_deaths", "seq")
    return dict(zip(keys, row))
