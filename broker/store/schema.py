"""The queue's schema, one migration per version, applied in order on open (`PRAGMA user_version`).

A database written by any older cutq opens with a newer one (v2 moved images out to blob files).
"""

from __future__ import annotations

SCHEMA_VERSION = 5
WAL_LIMIT_BYTES = 64 * 1024 * 1024  # the WAL is truncated to this after each checkpoint

MIGRATIONS: dict[int, str] = {
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
    2: """
    CREATE TABLE blobs (
        digest TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        refs INTEGER NOT NULL,
        created REAL NOT NULL
    ) WITHOUT ROWID;
    ALTER TABLE tasks ADD COLUMN input_digest TEXT;
    ALTER TABLE tasks ADD COLUMN result_digest TEXT;
    ALTER TABLE tasks ADD COLUMN result_size INTEGER;
    ALTER TABLE tasks ADD COLUMN cached INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE cache (
        key TEXT PRIMARY KEY,
        result_digest TEXT NOT NULL,
        ext TEXT NOT NULL,
        model_file TEXT,
        created REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX cache_result ON cache(result_digest);
    CREATE TABLE tombstones (
        job_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        deleted REAL NOT NULL,
        reason TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX jobs_finished ON jobs(finished);
    """,
    # a job's task ids are consecutive from first_task: an untouched job is re-queued at start
    # as one range, without reading its task rows
    3: """
    ALTER TABLE jobs ADD COLUMN first_task INTEGER;
    ALTER TABLE jobs ADD COLUMN delayed INTEGER NOT NULL DEFAULT 1;
    UPDATE jobs SET first_task = (SELECT MIN(id) FROM tasks WHERE tasks.job_id = jobs.id);
    CREATE INDEX jobs_queued ON jobs(first_task) WHERE n_queued > 0;
    """,
    # webhooks: the URL a job calls when it ends, and an outbox that survives a restart
    4: """
    ALTER TABLE jobs ADD COLUMN webhook TEXT;
    CREATE TABLE webhooks (
        job_id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        first_at REAL NOT NULL,
        last_error TEXT,
        delivered REAL
    ) WITHOUT ROWID;
    CREATE INDEX webhooks_due ON webhooks(state, next_at);
    """,
    # small images live here, in the transaction that names them (one fsync, not three); a
    # blob with no row here is a file in the blob store
    5: """
    CREATE TABLE blob_data (digest TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
    """,
}
