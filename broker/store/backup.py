"""The SQL of `cutq backup` (broker/backup.py): a consistent copy of a live database, and what it names.

The broker keeps writing while the copy is made: SQLite's online backup API, run in
one step, reads the source under one read transaction, which WAL lets the writer
work beside, so the copy is the database exactly as one commit left it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from broker.store.base import StoreError


def snapshot(source: Path, target: Path, busy_timeout_s: float = 30.0) -> None:
    """Copy the database `source` into the new file `target` (created 0600), checked and fsynced.

    Raises StoreError if the source is missing or unreadable, or the copy fails its check."""
    if not source.is_file():
        raise StoreError(f"no database at {source}")
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        # a second, ordinary connection (a read-only one may not join a WAL it cannot write to)
        src = sqlite3.connect(source, timeout=busy_timeout_s)
    except sqlite3.Error as e:
        raise StoreError(f"could not open {source}: {e}") from e
    try:
        src.execute("PRAGMA query_only = ON")
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # pages=-1: every page in one step, under one read transaction
            check = dst.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreError(f"the copy of {source} fails its check: {check}")
            # one self-contained file (no -wal or -shm beside it); the broker turns WAL on when it opens it
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    except sqlite3.Error as e:
        raise StoreError(f"could not copy {source}: {e}") from e
    finally:
        src.close()
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def named_blobs(db: Path) -> Iterator[tuple[str, int]]:
    """(digest, size) of every blob file a row of the database `db` refers to, streamed."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        inline = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'blob_data'").fetchone() is not None
        # small blobs kept in the database travel inside its copy: only files are named here
        yield from conn.execute("SELECT digest, size FROM blobs" + (
            " WHERE digest NOT IN (SELECT digest FROM blob_data)" if inline else ""))
    except sqlite3.Error as e:
        raise StoreError(f"could not read the blobs named by {db}: {e}") from e
    finally:
        conn.close()


def summary(db: Path) -> dict[str, int]:
    """How much the database `db` holds: jobs, and tasks by state."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out = {"jobs": int(conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])}
        out.update((f"tasks_{state}", int(n)) for state, n in
                   conn.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state"))
        return out
    except sqlite3.Error as e:
        raise StoreError(f"could not read {db}: {e}") from e
    finally:
        conn.close()

