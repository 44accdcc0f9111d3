"""The webhook outbox: which job endings still have to be told, and what happened when we tried.

Rows are written in the transaction that ends a job (base._enqueue_webhook), so a
broker killed before delivery delivers after its restart.
"""

from __future__ import annotations

from typing import Any

from broker.store.base import StoreBase

_COLUMNS = ("job_id", "url", "state", "attempts", "next_at", "first_at", "last_error", "delivered")


class Webhooks(StoreBase):
    """The outbox's reads and writes."""

    def webhooks_due(self, now: float, limit: int, skip: set[str]) -> list[dict[str, Any]]:
        """Pending deliveries whose time has come (not those in flight: `skip`)."""
        rows = self._db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM webhooks WHERE state = 'pending' AND next_at <= ? "
            "ORDER BY next_at LIMIT ?", (now, limit + len(skip))).fetchall()
        due = [dict(zip(_COLUMNS, r, strict=True)) for r in rows]
        return [d for d in due if d["job_id"] not in skip][:limit]

    def webhook_attempted(self, job_id: str, *, ok: bool, error: str | None, retry_at: float | None) -> None:
        """Record one delivery attempt: delivered, to be retried at `retry_at`, or given up (None)."""
        self._begin()
        now = self._clock()
        if ok:
            state, next_at = "delivered", now
        elif retry_at is not None:
            state, next_at = "pending", retry_at
        else:
            state, next_at = "failed", now
        self._db.execute(
            "UPDATE webhooks SET state = ?, attempts = attempts + 1, next_at = ?, last_error = ?, "
            "delivered = CASE WHEN ? THEN ? ELSE delivered END WHERE job_id = ?",
            (state, next_at, error, ok, now, job_id))

    def webhook(self, job_id: str) -> dict[str, Any] | None:
        """A job's delivery, as `status` shows it."""
        row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM webhooks WHERE job_id = ?", (job_id,)).fetchone()
        return dict(zip(_COLUMNS, row, strict=True)) if row else None

    def webhook_url(self, job_id: str) -> str | None:
        row = self._db.execute("SELECT webhook FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def webhook_counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT state, COUNT(*) FROM webhooks GROUP BY state").fetchall())

    def failed_tasks(self, job_id: str, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT id, name, error FROM tasks WHERE job_id = ? AND state = 'failed' "
                                "ORDER BY seq LIMIT ?", (job_id, limit))
        return [{"task_id": r[0], "name": r[1], "error": r[2]} for r in rows]

    def done_tasks(self, job_id: str, limit: int = 10_000) -> list[tuple[int, str]]:
        return self._db.execute("SELECT id, name FROM tasks WHERE job_id = ? AND state = 'done' ORDER BY seq LIMIT ?",
                                (job_id, limit)).fetchall()
