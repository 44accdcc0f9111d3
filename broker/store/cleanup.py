"""Deleting jobs: by hand (delete, purge) and by retention; keeping the files small.

A deleted job leaves a tombstone for a while, so asking for it says why it is gone
instead of only "not found".  Deletion is bounded per call, so the loop deletes a
big backlog a little each turn without stalling.
"""

from __future__ import annotations

from typing import Any

from broker.store.base import StoreBase
from broker.store.reads import _STATE_SQL

_FINAL = "n_queued + n_running = 0"


class Cleanup(StoreBase):
    """Removing jobs with their rows and blob references; vacuum and checkpoints."""

    def delete_job(self, job_id: str, reason: str) -> list[tuple[int, int, str | None]] | None:
        """Remove a job, its tasks and attempts (uncommitted); None if there is no such job.

        Returns its running tasks as (task_id, attempt, worker), for the caller to stop."""
        self._begin()
        row = self._db.execute("SELECT tenant, n_queued FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        tenant, queued = row
        running = self._db.execute(
            "SELECT id, attempts, worker FROM tasks WHERE job_id = ? AND state = 'running'", (job_id,)).fetchall()
        for input_digest, result_digest in self._db.execute(
                "SELECT input_digest, result_digest FROM tasks WHERE job_id = ?", (job_id,)).fetchall():
            self._unref(input_digest)
            self._unref(result_digest)
        self._db.execute("DELETE FROM attempts WHERE task_id IN (SELECT id FROM tasks WHERE job_id = ?)", (job_id,))
        self._db.execute("DELETE FROM tasks WHERE job_id = ?", (job_id,))
        self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        self._db.execute("DELETE FROM webhooks WHERE job_id = ?", (job_id,))
        self._db.execute("INSERT OR REPLACE INTO tombstones (job_id, tenant, deleted, reason) VALUES (?, ?, ?, ?)",
                         (job_id, tenant, self._clock(), reason))
        self.depth -= queued
        self._deltas.pop(job_id, None)
        self._job_cache.pop(job_id, None)
        return [(tid, attempt, worker) for tid, attempt, worker in running]

    def expired_jobs(self, finished_before: float, limit: int) -> list[str]:
        """Jobs whose every task is final and whose last one ended before `finished_before`."""
        rows = self._db.execute(
            f"SELECT id FROM jobs WHERE finished IS NOT NULL AND finished < ? AND {_FINAL} "
            "ORDER BY finished LIMIT ?", (finished_before, limit))
        return [r[0] for r in rows]

    def purgeable_jobs(self, *, state: str | None, created_before: float | None, tenant: str | None,
                       limit: int) -> list[str]:
        """Finished jobs matching the filters, oldest first."""
        where: list[str] = [_FINAL]
        params: list[Any] = []
        if state:
            where.append(_STATE_SQL[state])
        if created_before is not None:
            where.append("created < ?")
            params.append(created_before)
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        rows = self._db.execute(f"SELECT id FROM jobs WHERE {' AND '.join(where)} ORDER BY created LIMIT ?",
                                (*params, limit))
        return [r[0] for r in rows]

    def forget_tombstones(self, deleted_before: float) -> None:
        """Tombstones are kept a while, not forever."""
        self._begin()
        self._db.execute("DELETE FROM tombstones WHERE deleted < ?", (deleted_before,))

    def vacuum_step(self, pages: int = 512) -> int:
        """Give up to `pages` free pages back to the file system (outside any turn's transaction)."""
        if self._in_tx:
            return 0
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        if free:
            self._db.execute(f"PRAGMA incremental_vacuum({int(pages)})").fetchall()
        return min(free, pages)

    def checkpoint(self) -> dict[str, Any]:
        """Copy the WAL into the database and truncate it (a no-op while a reader holds it)."""
        busy, log, done = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return {"busy": busy, "wal_pages": log, "checkpointed": done}
