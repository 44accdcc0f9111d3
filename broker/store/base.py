"""The store's foundation: the connection, schema and migrations, transactions, blob references.

All of cutq's SQL lives in this package; image bytes do not (broker/blobs.py keeps
them, named by digest).  A row refers to a blob by digest; `blobs.refs` counts the
rows that do, in the same transaction that adds or removes them, and a blob whose
count reaches zero is handed to the caller after commit to delete.  The broker
calls `commit()` once per loop turn (group commit) and answers clients only then.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from broker.store.schema import MIGRATIONS, WAL_LIMIT_BYTES
from shared.states import TASK_STATES, TaskState

QUEUED, RUNNING, DONE, FAILED, CANCELLED = (TaskState.QUEUED, TaskState.RUNNING, TaskState.DONE,
                                             TaskState.FAILED, TaskState.CANCELLED)


_COUNT_COLUMNS = {s: f"n_{s}" for s in TASK_STATES}
IN_CHUNK = 500  # keys bound per statement by _rows_in: far under SQLite's limit of 32,766 parameters


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
    input_digest: str


@dataclass(frozen=True)
class Change:
    """One committed-to-be task state change, for events."""

    task_id: int
    job_id: str
    state: str
    worker: str | None = None
    error: str | None = None
    attempt: int = 0


@dataclass(frozen=True)
class BlobRef:
    """Stored bytes: their digest and size; `data` for a small blob kept in the database itself
    (written with the first row that names it, in the same transaction) rather than as a file."""

    digest: str
    size: int
    data: bytes | None = field(default=None, repr=False, compare=False)


class LegacyBlobs(Protocol):
    """Where the v1 -> v2 migration moves the images it finds inside the database."""

    def put(self, data: bytes | memoryview) -> str: ...


def referenced_checker(path: str | Path) -> Callable[[str], bool]:
    """`digest -> bool`: is a blob named by a row?  Its own read-only connection, for a thread."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)

    def referenced(digest: str) -> bool:
        return db.execute("SELECT 1 FROM blobs WHERE digest = ?", (digest,)).fetchone() is not None

    return referenced


class StoreBase:
    """Connection, schema, transactions, meta and blob reference counts."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5000,
        clock: Callable[[], float] = time.time,
        legacy_blobs: LegacyBlobs | None = None,
    ) -> None:
        self.path = str(path)
        self._clock = clock
        self._db = _Connection(self.path)
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        fresh = self._db.execute("PRAGMA user_version").fetchone()[0] == 0
        if fresh:  # must precede the first table; lets deletions give pages back to the disk
            self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        if self.path != ":memory:":
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"could not switch {self.path} to WAL (got {mode})")
            self._db.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"bad synchronous setting {synchronous!r}")
        self._db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        self._in_tx = False
        self._deltas: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.changes: list[Change] = []
        self._job_cache: dict[str, tuple[str, dict[str, Any]]] = {}
        self._unreferenced: list[str] = []  # blobs whose last row went in this transaction
        self._blob_delta = [0, 0, 0]  # blob count, blob bytes, referenced bytes: this transaction
        self._migrate(legacy_blobs)
        self._blob_delta = [0, 0, 0]
        self.blob_totals = self._blob_totals()  # the same, committed: kept in step, never re-summed
        self.depth = self.queued_depth()  # queued tasks, kept in step by every write

    def queued_depth(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(n_queued), 0) FROM jobs").fetchone()[0])

    # ------------------------------------------------------------------ schema

    def _migrate(self, legacy_blobs: LegacyBlobs | None) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        for target in sorted(v for v in MIGRATIONS if v > version):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in MIGRATIONS[target].split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                if target == 2:
                    self._move_blobs_out(legacy_blobs)
                self._db.execute(f"PRAGMA user_version = {target}")
                self._db.execute("COMMIT")
            except Exception:
                self._db.execute("ROLLBACK")
                raise
            if target == 2 and version == 1:  # an old database: give the images' pages back
                self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
                self._db.execute("VACUUM")

    def _move_blobs_out(self, legacy_blobs: LegacyBlobs | None) -> None:
        """v1 kept images in the `inputs` and `results` tables: move them to the blob store."""
        now = self._clock()
        for table, column, size_column in (("inputs", "input_digest", None), ("results", "result_digest",
                                                                             "result_size")):
            ids = [r[0] for r in self._db.execute(f"SELECT task_id FROM {table}")]
            for task_id in ids:  # one image in memory at a time
                data = self._db.execute(f"SELECT data FROM {table} WHERE task_id = ?", (task_id,)).fetchone()[0]
                if legacy_blobs is None:
                    raise StoreError("this database holds images from an older cutq; open it with a blob store")
                ref = BlobRef(legacy_blobs.put(data), len(data))
                self._ref(ref, now)
                sets = f"{column} = ?" + (f", {size_column} = ?" if size_column else "")
                self._db.execute(f"UPDATE tasks SET {sets} WHERE id = ?",
                                 (ref.digest, *((ref.size,) if size_column else ()), task_id))
            self._db.execute(f"DROP TABLE {table}")

    # ------------------------------------------------------------------ transactions

    def _rows_in(self, sql: str, keys: Sequence[Any], before: tuple[Any, ...] = (),
                 after: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """The rows of `sql` run for each chunk of `keys`, `{keys}` in it standing for the chunk's
        placeholders (`before`, `after`: the parameters bound ahead of and behind them)."""
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), IN_CHUNK):
            chunk = keys[start:start + IN_CHUNK]
            rows += self._db.execute(sql.replace("{keys}", ", ".join("?" * len(chunk))),
                                     (*before, *chunk, *after)).fetchall()
        return rows

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
        self.blob_totals = [a + b for a, b in zip(self.blob_totals, self._blob_delta, strict=True)]
        self._blob_delta = [0, 0, 0]
        changes, self.changes = self.changes, []
        return changes

    def take_unreferenced(self) -> list[str]:
        """Blobs no row refers to since the last commit: the caller deletes them."""
        out, self._unreferenced = self._unreferenced, []
        return out

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
        self._unreferenced = []
        self._blob_delta = [0, 0, 0]
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
            self._db.execute("UPDATE jobs SET finished = NULL WHERE id = ? AND n_queued + n_running > 0", (job_id,))
            ended = self._db.execute(
                "UPDATE jobs SET finished = ? WHERE id = ? AND finished IS NULL AND n_queued + n_running = 0 "
                "RETURNING webhook", (now, job_id)).fetchone()
            if ended is not None and ended[0]:
                self._enqueue_webhook(job_id, ended[0], now)
        self._deltas.clear()

    def _moved(self, job_id: str, old: str, new: str, change: Change) -> None:
        d = self._deltas[job_id]
        d[old] -= 1
        d[new] += 1
        self.depth += (new == QUEUED) - (old == QUEUED)
        self.changes.append(change)

    def _enqueue_webhook(self, job_id: str, url: str, now: float) -> None:
        """The job ended: its webhook goes in the outbox, in the transaction that ended it."""
        self._db.execute(
            "INSERT OR REPLACE INTO webhooks (job_id, url, state, attempts, next_at, first_at) "
            "VALUES (?, ?, 'pending', 0, ?, ?)", (job_id, url, now, now))

    # ------------------------------------------------------------------ blob references

    def _ref_many(self, refs: Sequence[BlobRef], now: float) -> None:
        """One more row refers to each of `refs` (a digest may repeat); in three statements whatever
        their number, as a job's inputs or a worker's batch of results come."""
        if len(refs) == 1:  # a one-photo job, a lone result: one statement, two for a new small blob
            self._ref(refs[0], now)
            return
        count: Counter[str] = Counter()
        first: dict[str, BlobRef] = {}
        for ref in refs:
            count[ref.digest] += 1
            first.setdefault(ref.digest, ref)
            self._blob_delta[2] += ref.size
        known = {d for (d,) in self._rows_in("SELECT digest FROM blobs WHERE digest IN ({keys})", list(first))}
        self._db.executemany(
            "INSERT INTO blobs (digest, size, refs, created) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (digest) DO UPDATE SET refs = refs + excluded.refs",
            [(d, ref.size, count[d], now) for d, ref in first.items()])
        new = [ref for d, ref in first.items() if d not in known]
        inline = [(ref.digest, ref.data) for ref in new if ref.data is not None]
        if inline:  # (blob_data is younger than the migrations that come through here)
            self._db.executemany("INSERT OR REPLACE INTO blob_data (digest, data) VALUES (?, ?)", inline)
        self._blob_delta[0] += len(new)
        self._blob_delta[1] += sum(ref.size for ref in new)

    def _ref(self, ref: BlobRef, now: float) -> None:
        """One more row refers to `ref` (created on first use)."""
        refs = self._db.execute(
            "INSERT INTO blobs (digest, size, refs, created) VALUES (?, ?, 1, ?) "
            "ON CONFLICT (digest) DO UPDATE SET refs = refs + 1 RETURNING refs",
            (ref.digest, ref.size, now)).fetchone()[0]
        self._blob_delta[2] += ref.size
        if refs == 1:
            if ref.data is not None:
                self._db.execute("INSERT OR REPLACE INTO blob_data (digest, data) VALUES (?, ?)",
                                 (ref.digest, ref.data))
            self._blob_delta[0] += 1
            self._blob_delta[1] += ref.size

    def _unref(self, digest: str | None) -> None:
        """One row fewer refers to `digest`; at zero its row goes and the bytes are to be deleted."""
        if digest is None:
            return
        row = self._db.execute(
            "UPDATE blobs SET refs = refs - 1 WHERE digest = ? RETURNING refs, size", (digest,)).fetchone()
        if row is None:
            return
        refs, size = row
        self._blob_delta[2] -= size
        if refs <= 0:
            self._db.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
            self._db.execute("DELETE FROM blob_data WHERE digest = ?", (digest,))
            self._db.execute("DELETE FROM cache WHERE result_digest = ?", (digest,))
            self._blob_delta[0] -= 1
            self._blob_delta[1] -= size
            self._unreferenced.append(digest)

    def _blob_totals(self) -> list[int]:
        count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs").fetchone()
        referenced = self._db.execute("SELECT COALESCE(SUM(size * refs), 0) FROM blobs").fetchone()[0]
        return [int(count), int(size), int(referenced)]

    def inline_blob(self, digest: str) -> bytes | None:
        """The bytes of a blob kept in the database (None: it is a file in the blob store)."""
        row = self._db.execute("SELECT data FROM blob_data WHERE digest = ?", (digest,)).fetchone()
        return bytes(row[0]) if row else None

    def inline_blobs(self, digests: Collection[str]) -> dict[str, bytes]:
        """The bytes of those of `digests` kept in the database (the others are files)."""
        return {d: bytes(data) for d, data in
                self._rows_in("SELECT digest, data FROM blob_data WHERE digest IN ({keys})", list(digests))}

    def is_referenced(self, digest: str) -> bool:
        """Whether a row refers to `digest` (the orphan sweep asks)."""
        return self._db.execute("SELECT 1 FROM blobs WHERE digest = ?", (digest,)).fetchone() is not None

    # ------------------------------------------------------------------ meta (pause flags, counters)

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self._begin()
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def bump_meta(self, key: str, by: int = 1) -> None:
        """Add `by` to an integer counter kept in meta."""
        self._begin()
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + ?", (key, str(by), by))

    def meta_items(self, prefix: str) -> dict[str, str]:
        rows = self._db.execute("SELECT key, value FROM meta WHERE key LIKE ?", (prefix + "%",))
        return dict(rows.fetchall())
