"""Reads: jobs, tasks, listings, counts, blob lookups, tombstones and storage figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from broker.store.base import StoreBase
from shared.states import TASK_STATES, job_state

_JOB_COLUMNS = (
    "id, created, tenant, processor, options, model, priority, total, "
    "n_queued, n_running, n_done, n_failed, n_cancelled, finished"
)
_TASK_COLUMNS = (
    "id, job_id, name, state, attempts, worker, error, created, started, finished, "
    "result_ext, input_size, failures, worker_deaths, seq, cached"
)


SEARCH_MATCHES = 1000  # tasks a file-name search looks at, at most
# what the job list can be sorted by: SQL over the job row's counters
SORT_KEYS: dict[str, str] = {
    "created": "created",
    "state": ("CASE WHEN n_queued = total THEN 0 WHEN n_queued + n_running > 0 THEN 1 "
              "WHEN n_done = total THEN 2 WHEN n_failed > 0 THEN 3 ELSE 4 END"),
    "progress": "(n_done + n_failed + n_cancelled) * 1.0 / MAX(total, 1)",
    "errors": "n_failed",
    "tenant": "tenant",
}


class Reads(StoreBase):
    """Everything that only looks."""

    def job_exists(self, job_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None

    def job(self, job_id: str) -> dict[str, Any] | None:
        row = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job_dict(row) if row else None

    def job_tasks(self, job_id: str, state: str | None = None, limit: int = 0,
                  offset: int = 0) -> list[dict[str, Any]]:
        """A job's tasks in submission order: all, or a page, optionally of one state."""
        where, params = "job_id = ?", [job_id]
        if state is not None:
            where += " AND state = ?"
            params.append(state)
        page = f" LIMIT {int(limit)} OFFSET {int(offset)}" if limit > 0 else ""
        rows = self._db.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE {where} ORDER BY seq{page}", params)
        return [_task_dict(r) for r in rows]

    def jobs_with_prefix(self, prefix: str, tenant: str | None, limit: int = 10) -> list[str]:
        """Ids of jobs starting with `prefix` (of `tenant` only, unless None), an index range."""
        sql = "SELECT id FROM jobs WHERE id >= ? AND id < ?"
        params: list[Any] = [prefix, prefix + "\U0010ffff"]
        if tenant is not None:
            sql += " AND tenant = ?"
            params.append(tenant)
        return [r[0] for r in self._db.execute(sql + " ORDER BY id LIMIT ?", (*params, limit))]

    def task_attempts(self, task_id: int) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT attempt, worker, started, finished, outcome, error FROM attempts WHERE task_id = ? "
            "ORDER BY attempt",
            (task_id,),
        )
        keys = ("attempt", "worker", "started", "finished", "outcome", "error")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def list_jobs(
        self, state: str | None, search: str | None, limit: int, offset: int, tenant: str | None = None,
        sort: str = "created", descending: bool = True,
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of jobs, filtered by derived state, tenant and id/file-name prefix, sorted over all
        of them by `sort` (see SORT_KEYS), newest first among equals."""
        where, params = [], []
        if state:
            where.append(_STATE_SQL[state])
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        if search:
            # prefixes, as index ranges: the cost does not grow with the queue (a substring
            # match of file names would read every task)
            end = search + "\U0010ffff"
            where.append("((id >= ? AND id < ?) OR id IN (SELECT job_id FROM tasks INDEXED BY tasks_name "
                         f"WHERE name >= ? AND name < ? LIMIT {SEARCH_MATCHES}))")
            params += [search, end, search, end]
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        total = self._db.execute(f"SELECT COUNT(*) FROM jobs {clause}", params).fetchone()[0]
        rows = self._db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs {clause} ORDER BY {SORT_KEYS[sort]} {'DESC' if descending else 'ASC'}, "
            "created DESC, rowid DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        ).fetchall()
        return [_job_dict(r) for r in rows], total

    def tenant_queued(self, tenant: str) -> int:
        row = self._db.execute("SELECT COALESCE(SUM(n_queued), 0) FROM jobs WHERE tenant = ?", (tenant,)).fetchone()
        return int(row[0])

    def first_queued(self, job_id: str) -> int | None:
        """The id of a job's first queued task (the broker asks the scheduler for its position)."""
        # a job's ids grow with seq: the first queued in seq order is the smallest
        row = self._db.execute("SELECT id FROM tasks INDEXED BY tasks_job WHERE job_id = ? AND state = 'queued' "
                               "ORDER BY seq LIMIT 1", (job_id,)).fetchone()
        return row[0] if row else None

    def queued_ids(self, job_id: str) -> list[int]:
        return [r[0] for r in self._db.execute("SELECT id FROM tasks WHERE job_id = ? AND state = 'queued'",
                                               (job_id,))]

    def queue_position(self, job_id: str) -> int:
        """Queued tasks of the same tenant that dispatch before this job's first queued task.

        A scan of the queue: the reference the scheduler's own answer (what the broker uses,
        the same at any depth) is checked against in the tests."""
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
        return {"jobs": row[0], **dict(zip(TASK_STATES, row[1:], strict=True))}

    def counts_by_tenant(self, active_only: bool = False) -> dict[str, dict[str, int]]:
        """Task counts by state for each tenant (only those with queued work, if asked)."""
        rows = self._db.execute(
            "SELECT tenant, SUM(n_queued), SUM(n_running), SUM(n_done), SUM(n_failed), SUM(n_cancelled) "
            "FROM jobs GROUP BY tenant" + (" HAVING SUM(n_queued) > 0" if active_only else "")
        )
        return {r[0]: dict(zip(TASK_STATES, r[1:], strict=True)) for r in rows}

    def blob(self, task_id: int, what: str) -> tuple[dict[str, Any], str] | None:
        """A task's result or input: its name, extension and owner, and the digest of its bytes."""
        column = {"result": "t.result_digest", "input": "t.input_digest"}[what]
        row = self._db.execute(
            f"SELECT t.name, t.job_id, t.result_ext, t.state, j.tenant, {column} FROM tasks t "
            f"JOIN jobs j ON j.id = t.job_id WHERE t.id = ?",
            (task_id,),
        ).fetchone()
        if row is None or row[5] is None:
            return None
        name, job_id, ext, state, tenant, digest = row
        if what == "input":
            ext = Path(name).suffix.lstrip(".") or "bin"
        return {"task_id": task_id, "job_id": job_id, "name": name, "ext": ext, "state": state,
                "tenant": tenant}, digest

    def tombstone(self, job_id: str) -> dict[str, Any] | None:
        """Why a job that is gone went (deleted, expired), if we still remember it."""
        row = self._db.execute("SELECT tenant, deleted, reason FROM tombstones WHERE job_id = ?",
                               (job_id,)).fetchone()
        return {"tenant": row[0], "deleted": row[1], "reason": row[2]} if row else None

    def storage(self) -> dict[str, int]:
        """Bytes held in the database and in blobs, and what deduplication saved."""
        page_count = self._db.execute("PRAGMA page_count").fetchone()[0]
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        freelist = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        count, size, referenced = self.blob_totals
        hits = self.get_meta("counter:cache_hits")
        return {"db_bytes": int(page_count * page_size), "db_free_bytes": int(freelist * page_size),
                "blob_count": count, "blob_bytes": size, "dedup_saved_bytes": max(0, referenced - size),
                "cache_hits": int(hits or 0)}

    def task_failures(self, task_id: int) -> int:
        row = self._db.execute("SELECT failures FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return row[0] if row else 0

    def task_timing(self, task_id: int) -> tuple[float, float, float, str | None]:
        """(created, started, finished, model) of a task's latest attempt."""
        row = self._db.execute("SELECT t.created, COALESCE(t.started, t.created), COALESCE(t.finished, t.created), "
                               "j.model FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.id = ?",
                               (task_id,)).fetchone()
        return (row[0], row[1], row[2], row[3]) if row else (0.0, 0.0, 0.0, None)

    def job_tenant(self, task_id: int) -> str | None:
        row = self._db.execute("SELECT j.tenant FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.id = ?",
                               (task_id,)).fetchone()
        return row[0] if row else None

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
            "finished", "result_ext", "input_size", "failures", "worker_deaths", "seq", "cached")
    out = dict(zip(keys, row, strict=True))
    out["cached"] = bool(out["cached"])
    return out
