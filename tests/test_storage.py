"""Image storage on real processes: one file per distinct image, the result cache,
retention giving the disk back, the orphan sweep at start, and the v1 -> v2 upgrade.

A real broker (and, where a job must run, a real worker) per test; the data dir is
inspected from outside, as an operator would: files under DATA/blobs, `du` of DATA.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
import zmq

from broker.store.schema import SCHEMA_VERSION
from shared import protocol as p
from shared.client import CutqError
from shared.security import Credentials
from tests.cluster import Cluster, sample_photo, wait_for

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- helpers


def blob_files(data: Path) -> dict[str, Path]:
    """Image files in the blob store's fan-out (DATA/blobs/ab/cd/<digest>), by name."""
    root = data / "blobs"
    return {f.name: f for f in root.glob("??/??/*") if f.is_file()}


def disk_used(path: Path) -> int:
    """Bytes the tree under `path` occupies on disk (du: allocated blocks, folders included)."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:  # deleted while we walked
                pass
    return total


def noise(n: int, seed: int) -> bytes:
    """`n` incompressible bytes behind a PNG signature (so noop names its result .png)."""
    return PNG_MAGIC + hashlib.shake_256(seed.to_bytes(8, "big")).digest(n - len(PNG_MAGIC))


def raw_request(endpoint: str, msg: p.Message, timeout: float = 30.0) -> p.Reply:
    """Send one protocol message on a DEALER of our own and return the broker's reply
    (for fields the client library does not expose yet)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(endpoint)
        sock.send_multipart(p.encode(msg))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(int(left * 1000)):
                break
            reply = p.decode(sock.recv_multipart())
            if isinstance(reply, p.Reply) and reply.req == msg.req:  # type: ignore[attr-defined]
                return reply
        raise AssertionError(f"no reply to {type(msg).__name__} within {timeout}s")
    finally:
        sock.close(0)
        ctx.term()


@contextmanager
def read_db(data: Path) -> Iterator[sqlite3.Connection]:
    """A read-only look at the broker's database while it runs (WAL: readers never block it)."""
    with closing(sqlite3.connect(f"file:{data / 'cutq.db'}?mode=ro", uri=True)) as db:
        yield db


def attempt_rows(data: Path, task_id: int) -> int:
    with read_db(data) as db:
        return int(db.execute("SELECT COUNT(*) FROM attempts WHERE task_id = ?", (task_id,)).fetchone()[0])


def gone_message(client, job_id: str) -> str | None:
    """The not_found error a status request for `job_id` gets now (None while it exists)."""
    try:
        client.status(job_id, tasks=False)
    except CutqError as e:
        assert e.code == "not_found", (e.code, str(e))
        return str(e)
    return None


def cutq_keys(cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "keys", "--data", str(cluster.data), *args],
                          capture_output=True, text=True, env=cluster.env, timeout=60, check=False)


def make_keys(cluster: Cluster, *specs: tuple[str, str, str | None]) -> dict[str, Credentials]:
    """`cutq keys init`, then one key per (name, role, tenant); the cluster's own client is the admin."""
    r = cutq_keys(cluster, "init")
    assert r.returncode == 0, r.stderr
    server = cluster.data / "keys" / "broker.key"
    creds = {}
    for name, role, tenant in specs:
        r = cutq_keys(cluster, "--json", "add", name, "--role", role, *(["--tenant", tenant] if tenant else []))
        assert r.returncode == 0, r.stderr
        creds[name] = Credentials.load(Path(json.loads(r.stdout)["secret_certificate"]), server)
    cluster.credentials = creds["root"]
    return creds


# ---------------------------------------------------------------- deduplication


def test_two_tenants_same_photo_one_file_each_sees_only_its_job(cluster: Cluster):
    creds = make_keys(cluster, ("alice", "client", "A"), ("bob", "client", "B"), ("root", "admin", None))
    cluster.start_broker()
    alice, bob, admin = cluster.client(credentials=creds["alice"]), cluster.client(credentials=creds["bob"]), \
        cluster.client()
    photo = noise(300_000, 1)
    digest = hashlib.sha256(photo).hexdigest()
    before = admin.stats()["storage"]
    a_job = alice.submit([("same.png", photo)], processor="noop")  # no worker: the jobs stay queued
    b_job = bob.submit([("same.png", photo)], processor="noop")

    files = blob_files(cluster.data)
    assert list(files) == [digest], f"expected one blob file named by the photo's sha256, found {sorted(files)}"
    assert files[digest].read_bytes() == photo
    storage = admin.stats()["storage"]
    assert storage["blob_count"] - before["blob_count"] == 1, storage
    assert storage["blob_bytes"] - before["blob_bytes"] == len(photo), storage
    assert storage["dedup_saved_bytes"] - before["dedup_saved_bytes"] == len(photo), storage

    # each tenant lists only its own job, though both point at the same file
    assert [j["job_id"] for j in alice.list_jobs()["jobs"]] == [a_job]
    assert [j["job_id"] for j in bob.list_jobs()["jobs"]] == [b_job]
    assert {j["job_id"] for j in admin.list_jobs()["jobs"]} == {a_job, b_job}
    with pytest.raises(CutqError) as err:
        alice.status(b_job)
    assert err.value.code == "not_found"
    # each reads the image back through its own task
    for client, job in ((alice, a_job), (bob, b_job)):
        task = client.status(job)["tasks"][0]["task_id"]
        assert client.fetch_result(task, "input")[1] == photo


# ---------------------------------------------------------------- result cache


@pytest.mark.timeout(240)  # real inference on a loaded machine: model load plus two runs
def test_identical_rembg_submission_is_answered_from_the_cache(cluster: Cluster, needs_model):
    photo = sample_photo("chelsea.png").read_bytes()
    options = {"model": "u2netp"}
    cluster.start_broker()
    cluster.start_worker(1, "--threads", "1", name="infer")
    cluster.wait_workers(1)
    client = cluster.client(timeout=30)

    def worker_done() -> int:
        return next(w["done"] for w in client.workers() if w["name"] == "infer")

    first = client.submit([("chelsea.png", photo)], options=options)
    s1 = client.wait(first, timeout=180)
    assert s1["state"] == "done", s1
    t1 = s1["tasks"][0]
    assert t1["attempts"] == 1 and not t1["cached"], t1
    assert worker_done() == 1
    result1 = client.fetch_result(t1["task_id"])[1]
    assert client.stats()["storage"]["cache_hits"] == 0

    # the same bytes, processor and options again: done on arrival, never dispatched
    second = raw_request(cluster.endpoint, p.Submit(req=7, names=["chelsea-again.png"], options=options,
                                                    blobs=[photo]))
    assert second.ok and second.data["cached"] == 1 and second.data["tasks"] == [], second
    s2 = client.status(second.data["job_id"])
    assert s2["state"] == "done", s2
    t2 = s2["tasks"][0]
    assert t2["cached"] is True and t2["attempts"] == 0 and t2["worker"] is None, t2
    assert attempt_rows(cluster.data, t2["task_id"]) == 0
    assert client.fetch_result(t2["task_id"])[1] == result1
    assert client.stats()["storage"]["cache_hits"] == 1
    assert worker_done() == 1, "the cached task reached the worker"

    # no_cache: it runs again on the worker
    third = raw_request(cluster.endpoint, p.Submit(req=8, names=["chelsea.png"], options=options, blobs=[photo],
                                                   no_cache=True))
    assert third.ok and third.data["cached"] == 0 and len(third.data["tasks"]) == 1, third
    s3 = client.wait(third.data["job_id"], timeout=180)
    t3 = s3["tasks"][0]
    assert s3["state"] == "done" and t3["attempts"] == 1 and not t3["cached"], s3
    assert attempt_rows(cluster.data, t3["task_id"]) == 1
    assert worker_done() == 2
    assert client.stats()["storage"]["cache_hits"] == 1


# ---------------------------------------------------------------- retention


@pytest.mark.timeout(120)  # expiry, then the incremental vacuum and a WAL checkpoint
def test_retention_gives_the_disk_back(cluster: Cluster):
    cluster.start_broker("--retention", "2s")
    cluster.start_worker(8, "--preload", "")
    cluster.wait_workers(1)
    client = cluster.client(timeout=60)
    empty = disk_used(cluster.data)
    images = [noise(5_000_000, seed) for seed in range(6)]  # 30 MB that no file system compresses
    jobs = [client.submit([(f"big{i}.png", img)], processor="noop") for i, img in enumerate(images)]
    for job in jobs:
        assert client.wait(job, timeout=60)["state"] == "done"
    # snapshot while every job is still held (retention counts from when each finished)
    full = disk_used(cluster.data)
    held = len(blob_files(cluster.data))
    assert full - empty >= sum(map(len, images)), f"empty {empty} B, full {full} B"
    assert held == len(images), f"{held} blob files for {len(images)} distinct images (noop: result = input)"

    gone = wait_for(lambda: gone_message(client, jobs[-1]), 30, what="the last job to expire")
    assert "is gone: expired" in gone, gone
    wait_for(lambda: not blob_files(cluster.data), 30, what="blob files to be deleted")
    tolerance = 1 << 20
    wait_for(lambda: disk_used(cluster.data) <= empty + tolerance, 60,
             what=f"the data dir back within 1 MiB of its empty size ({empty} B)")
    after = disk_used(cluster.data)
    storage = client.stats()["storage"]
    assert storage["blob_count"] == 0 and storage["blob_bytes"] == 0, storage
    assert all(gone_message(client, j) for j in jobs)
    assert after <= empty + tolerance, f"empty {empty} B, with 30 MB held {full} B, after expiry {after} B"


# ---------------------------------------------------------------- orphans


def test_orphan_blobs_are_swept_at_start_and_referenced_ones_stay(cluster: Cluster):
    cluster.start_broker()
    client = cluster.client()
    kept = noise(10_000, 2)
    job = client.submit([("kept.png", kept)], processor="noop")  # no worker: stays queued
    task = client.status(job)["tasks"][0]["task_id"]
    cluster.stop()

    kept_file = blob_files(cluster.data)[hashlib.sha256(kept).hexdigest()]
    stray = cluster.data / "blobs" / "ab" / "cd" / ("abcd" + "0123456789" * 6)
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"written by a broker that died before its commit")
    half = cluster.data / "blobs" / "tmp" / "half-written.123.456"
    half.write_bytes(b"half")
    hour_ago = time.time() - 3600
    for f in (stray, kept_file):
        os.utime(f, (hour_ago, hour_ago))

    cluster.start_broker()
    client = cluster.client()
    wait_for(lambda: not stray.exists(), 20, what="the stray blob to be swept")
    wait_for(lambda: "swept 1 orphan" in (cluster.tmp / "broker.log").read_text(errors="replace"), 20,
             what="the sweep to finish")
    assert kept_file.exists(), "the sweep deleted a blob a row refers to"
    assert not half.exists(), "a half-written temporary file survived the restart"
    assert client.fetch_result(task, "input")[1] == kept


# ---------------------------------------------------------------- upgrade from v1

# The schema of the last release that kept images inside the database
# (`git show b217762:broker/store.py`, SCHEMA_VERSION = 1), as it wrote it.
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, created REAL NOT NULL, tenant TEXT NOT NULL, processor TEXT NOT NULL,
    options TEXT NOT NULL, model TEXT, priority INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL,
    n_queued INTEGER NOT NULL DEFAULT 0, n_running INTEGER NOT NULL DEFAULT 0, n_done INTEGER NOT NULL DEFAULT 0,
    n_failed INTEGER NOT NULL DEFAULT 0, n_cancelled INTEGER NOT NULL DEFAULT 0, finished REAL
);
CREATE INDEX jobs_created ON jobs(created);
CREATE INDEX jobs_tenant ON jobs(tenant);
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY, job_id TEXT NOT NULL REFERENCES jobs(id), seq INTEGER NOT NULL, name TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
    worker_deaths INTEGER NOT NULL DEFAULT 0, worker TEXT, error TEXT, created REAL NOT NULL, started REAL,
    finished REAL, not_before REAL NOT NULL DEFAULT 0, input_size INTEGER NOT NULL, result_ext TEXT
);
CREATE INDEX tasks_job ON tasks(job_id, seq);
CREATE INDEX tasks_state ON tasks(state);
CREATE INDEX tasks_name ON tasks(name);
CREATE TABLE inputs (task_id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE results (task_id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE attempts (
    task_id INTEGER NOT NULL, attempt INTEGER NOT NULL, worker TEXT NOT NULL, started REAL NOT NULL,
    finished REAL, outcome TEXT, error TEXT, PRIMARY KEY (task_id, attempt)
);
"""


def write_v1_database(path: Path, now: float) -> dict[str, dict]:
    """A v1 queue as the old broker left it: a finished job (two tasks whose inputs are the
    same photo), and a queued one.  Returns what it holds, by job id."""
    photo, cut, other_cut = noise(1_500_000, 10), noise(1_000_000, 11), noise(1_000_000, 12)
    queued_input = noise(700_000, 13)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.executescript(V1_SCHEMA)
    db.execute("BEGIN")
    db.execute("INSERT INTO jobs (id, created, tenant, processor, options, model, priority, total, n_done, finished)"
               " VALUES ('v1done000001', ?, 'default', 'noop', '{}', NULL, 0, 2, 2, ?)", (now - 60, now - 30))
    for tid, seq, name, result in ((1, 0, "a.png", cut), (2, 1, "b.png", other_cut)):
        db.execute("INSERT INTO tasks (id, job_id, seq, name, state, attempts, worker, created, started, finished,"
                   " input_size, result_ext) VALUES (?, 'v1done000001', ?, ?, 'done', 1, 'w-old', ?, ?, ?, ?, 'png')",
                   (tid, seq, name, now - 60, now - 50, now - 30, len(photo)))
        db.execute("INSERT INTO inputs VALUES (?, ?)", (tid, photo))
        db.execute("INSERT INTO results VALUES (?, ?)", (tid, result))
        db.execute("INSERT INTO attempts VALUES (?, 1, 'w-old', ?, ?, 'done', NULL)", (tid, now - 50, now - 30))
    db.execute("INSERT INTO jobs (id, created, tenant, processor, options, model, priority, total, n_queued)"
               " VALUES ('v1queued0001', ?, 'default', 'noop', '{}', NULL, 0, 1, 1)", (now - 20,))
    db.execute("INSERT INTO tasks (id, job_id, seq, name, state, created, input_size) "
               "VALUES (3, 'v1queued0001', 0, 'c.png', 'queued', ?, ?)", (now - 20, len(queued_input)))
    db.execute("INSERT INTO inputs VALUES (3, ?)", (queued_input,))
    db.execute("COMMIT")
    db.execute("PRAGMA user_version = 1")
    db.close()
    return {"v1done000001": {"inputs": [photo, photo], "results": [cut, other_cut]},
            "v1queued0001": {"inputs": [queued_input]}}


@pytest.mark.timeout(90)
def test_a_v1_database_is_migrated_at_start_with_its_images(cluster: Cluster):
    cluster.data.mkdir(mode=0o700)
    held = write_v1_database(cluster.data / "cutq.db", time.time())
    v1_size = (cluster.data / "cutq.db").stat().st_size
    cluster.start_broker()
    client = cluster.client()

    done = client.status("v1done000001")
    assert done["state"] == "done" and [t["name"] for t in done["tasks"]] == ["a.png", "b.png"], done
    for task, want_in, want_out in zip(done["tasks"], held["v1done000001"]["inputs"],
                                       held["v1done000001"]["results"], strict=True):
        meta, data = client.fetch_result(task["task_id"])
        assert data == want_out and meta["ext"] == "png", f"task {task['task_id']}: result changed in the upgrade"
        assert client.fetch_result(task["task_id"], "input")[1] == want_in
    # the photo both tasks share became one file; every distinct image has exactly one
    distinct = {hashlib.sha256(b).hexdigest() for job in held.values() for kind in job.values() for b in kind}
    assert set(blob_files(cluster.data)) == distinct
    storage = client.stats()["storage"]
    assert storage["blob_count"] == len(distinct), storage
    assert storage["dedup_saved_bytes"] == len(held["v1done000001"]["inputs"][0]), storage
    with read_db(cluster.data) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert not tables & {"inputs", "results"}, tables
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental from now on
    db_size = (cluster.data / "cutq.db").stat().st_size
    assert db_size < 1 << 20, f"the database kept the images' pages: {v1_size} B before, {db_size} B after"

    # the queued v1 task runs from its moved input
    cluster.start_worker(1, "--preload", "")
    queued = client.wait("v1queued0001", timeout=60)
    assert queued["state"] == "done", queued
    want = held["v1queued0001"]["inputs"][0]
    assert client.fetch_result(queued["tasks"][0]["task_id"])[1] == want  # noop: the result is the input


# ---------------------------------------------------------------- regressions: deletion racing a re-submission, a foreign file in the sweep


def test_resubmitting_a_photo_as_its_last_job_is_deleted_keeps_the_file(cluster: Cluster):
    """`cutq delete JOB` and an immediate re-submission of the same photo (or retention expiring
    a job while the photo comes in again): the new job must keep its image."""
    cluster.start_broker()
    client = cluster.client()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(cluster.endpoint)
    kept: dict[str, str] = {}  # job id -> digest of its input
    try:
        for i in range(16):
            photo = noise(100_000, 1000 + i)
            old = client.submit([("x.png", photo)], processor="noop")  # no worker: stays queued
            # both in one broker turn: the delete drops the last reference, the submit finds the file
            sock.send_multipart(p.encode(p.Delete(req=1, job_id=old)))
            sock.send_multipart(p.encode(p.Submit(req=2, names=["x.png"], processor="noop", blobs=[photo])))
            replies: dict[int, p.Reply] = {}
            while len(replies) < 2:
                assert sock.poll(30_000), "no reply from the broker"
                reply = p.decode(sock.recv_multipart())
                if isinstance(reply, p.Reply):
                    replies[reply.req] = reply
            assert replies[1].ok and replies[2].ok, replies
            kept[replies[2].data["job_id"]] = hashlib.sha256(photo).hexdigest()
    finally:
        sock.close(0)
        ctx.term()
    cluster.stop()  # a clean stop waits for every blob write and deletion the broker started
    with read_db(cluster.data) as db:
        rows = dict(db.execute("SELECT job_id, input_digest FROM tasks").fetchall())
    assert rows == kept
    on_disk = set(blob_files(cluster.data))
    lost = [job for job, digest in kept.items() if digest not in on_disk]
    assert not lost, f"{len(lost)} of {len(kept)} acknowledged jobs lost their input file: {lost}"


def test_a_foreign_file_in_the_blob_folders_does_not_stop_the_orphan_sweep(cluster: Cluster):
    cluster.start_broker()
    cluster.stop()
    fan = cluster.data / "blobs" / "ab" / "cd"
    fan.mkdir(parents=True)
    (fan / ".abcd0000.rsync-tmp").write_bytes(b"not a blob")  # e.g. left by a backup tool
    strays = [fan / f"abcd{i:02d}{'0' * 58}" for i in range(20)]
    hour_ago = time.time() - 3600
    for f in [*strays, fan / ".abcd0000.rsync-tmp"]:
        f.touch()
        os.utime(f, (hour_ago, hour_ago))
    cluster.start_broker()
    log = cluster.tmp / "broker.log"
    wait_for(lambda: "orphan blobs" in log.read_text(errors="replace"), 15, what="the sweep to report")
    left = [f.name for f in strays if f.exists()]
    assert not left, f"{len(left)} of {len(strays)} orphans survived the sweep"
