"""`cutq backup` on a live broker, and a second broker serving the copy (real processes).

The backup runs while two noop workers work, submissions go on from one thread and
deletions from another; a broker started on the copy must hold every job the
snapshot held, done ones with byte-identical results, and finish the rest.  The
broker holds blob deletions while DATA/backup.lock is fresh, so nothing the
snapshot names can vanish before it is copied.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shared.client import Client, CutqError
from tests.cluster import Cluster, wait_for
from tests.test_security import Keys, keys, secure  # noqa: F401  (fixtures)

PNG = b"\x89PNG\r\n\x1a\n"


def _backup_cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    """The real `cutq backup`: a local command on the broker's machine (no --connect)."""
    return subprocess.run([sys.executable, "-m", "cli", "backup", *args], capture_output=True, text=True,
                          env=cluster.env, timeout=300, cwd=cluster.tmp)


def _image(tag: str) -> bytes:
    return PNG + hashlib.sha256(tag.encode()).digest() * 64 + os.urandom(32)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _blob(data: Path, content: bytes) -> Path:
    d = hashlib.sha256(content).hexdigest()
    return data / "blobs" / d[:2] / d[2:4] / d


def _all_jobs(client: Client) -> list[dict]:
    jobs: list[dict] = []
    while True:
        page = client.list_jobs(limit=1000, offset=len(jobs))
        jobs += page["jobs"]
        if len(jobs) >= page["total"] or not page["jobs"]:
            return jobs


def _backup(cluster: Cluster, dest: Path, *extra: str) -> dict:
    r = _backup_cli(cluster, str(dest), "--data", str(cluster.data), "--json", *extra)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return json.loads(r.stdout)


class Traffic:
    """Submissions from one thread until stopped; deletions of earlier jobs from another."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.inputs: dict[str, list[bytes]] = {}  # job -> its images, in order
        self.acked: dict[str, float] = {}  # job -> when its submission was acknowledged
        self.deleted: dict[str, float] = {}  # job -> when its deletion was sent
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.deleting = threading.Event()
        self.deleting_since = 0.0
        self.threads = [threading.Thread(target=self._submit, daemon=True),
                        threading.Thread(target=self._delete, daemon=True)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def start_deleting(self) -> None:
        self.deleting_since = time.time()
        self.deleting.set()

    def finish(self) -> None:
        self.stop.set()
        self.deleting.set()
        for t in self.threads:
            t.join(30)

    def _submit(self) -> None:
        client = self.cluster.client(timeout=10)
        i = 0
        while not self.stop.is_set():
            files = [(f"s{i}-{k}.png", _image(f"{i}-{k}")) for k in range(3)]
            try:
                job = client.submit(files, processor="noop")
            except CutqError as e:
                self.errors.append(f"submit {i}: {e}")
                return
            self.inputs[job] = [d for _, d in files]
            self.acked[job] = time.time()
            i += 1
            time.sleep(0.01)

    def _delete(self) -> None:
        """Once `deleting` is set and the backup has taken its lock: delete every other job
        acknowledged before, as fast as the broker answers (jobs the backup's snapshot holds,
        so their blobs must wait for the copy)."""
        client = self.cluster.client(timeout=10)
        self.deleting.wait()
        lock = self.cluster.data / "backup.lock"
        deadline = time.monotonic() + 30
        while not lock.exists() and not self.stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.001)  # from the snapshot on, so every deletion races the copy
        for job in [j for j, t in self.acked.items() if t < self.deleting_since][::2]:
            if self.stop.is_set():
                return
            self.deleted[job] = time.time()
            try:
                client.delete(job)
            except CutqError as e:
                self.errors.append(f"delete {job}: {e}")
                return


@pytest.mark.timeout(180)  # traffic, a backup, a second broker finishing the copy's work
def test_backup_while_workers_run_and_clients_submit_serves_the_same_jobs(cluster: Cluster, tmp_path: Path):
    cluster.start_broker()
    for _ in range(2):
        cluster.start_worker(2, "--preload", "")
    cluster.wait_workers(2)
    traffic = Traffic(cluster)
    traffic.start()
    try:
        wait_for(lambda: len(traffic.acked) >= 150, 60, what="some jobs submitted")
        dest = tmp_path / "backup"
        began = time.time()
        traffic.start_deleting()
        report = _backup(cluster, dest, "--copy")  # a copy (fsync each) leaves deletions time to race it
        ended = time.time()
        wait_for(lambda: any(t > ended for t in traffic.acked.values()), 20, what="a submission after the backup")
    finally:
        traffic.finish()
    assert traffic.errors == []
    assert not (cluster.data / "backup.lock").exists()
    assert report["missing"] == [] and report["blobs"] > 0 and report["copied"] == report["blobs"]

    assert _mode(dest) == 0o700 and _mode(dest / "cutq.db") == 0o600
    assert {p.name for p in dest.iterdir()} == {"cutq.db", "blobs"}  # no -wal, no -shm: one file
    for f in (dest / "blobs").rglob("*"):
        assert _mode(f) == (0o700 if f.is_dir() else 0o600), f

    copy = Cluster(tmp_path / "copy")
    copy.tmp.mkdir()
    copy.data = dest
    try:
        copy.start_broker()
        reader = copy.client(timeout=30)
        jobs = {j["job_id"]: j for j in _all_jobs(reader)}
        assert set(jobs) <= set(traffic.inputs), "the copy holds a job nobody submitted"
        # acknowledged before the backup began, and never deleted while it ran: in the copy
        must = {j for j, t in traffic.acked.items() if t < began and traffic.deleted.get(j, ended + 1) > ended}
        assert must - set(jobs) == set(), "jobs acknowledged before the backup are missing from it"
        assert not {j for j, t in traffic.acked.items() if t > ended + 1} & set(jobs)
        done_tasks = 0
        for job_id in jobs:
            status = reader.status(job_id)
            assert status["total"] == 3
            for task, want in zip(status["tasks"], traffic.inputs[job_id], strict=True):
                if task["state"] == "done":
                    assert bytes(reader.fetch_result(task["task_id"])[1]) == want
                    done_tasks += 1
                assert bytes(reader.fetch_result(task["task_id"], "input")[1]) == want
        assert done_tasks > 0
        assert done_tasks == report["counts"].get("tasks_done", 0)
        # a worker on the copy finishes what was queued or running at the snapshot
        copy.start_worker(2, "--preload", "")
        wait_for(lambda: reader.stats()["done"] == 3 * len(jobs), 60, interval=0.2, what="the copy's work done")
        for job_id in jobs:
            for task, want in zip(reader.status(job_id)["tasks"], traffic.inputs[job_id], strict=True):
                assert bytes(reader.fetch_result(task["task_id"])[1]) == want
    finally:
        copy.stop()
    # the original went on serving, and made the deletions it held once the backup ended
    assert cluster.client().stats()["done"] > 0
    gone = [d for job in traffic.deleted for d in traffic.inputs[job]]
    assert gone
    wait_for(lambda: not any(_blob(cluster.data, d).exists() for d in gone), 10,
             what="the deletions held during the backup")


def test_blob_deletions_wait_while_the_backup_lock_is_fresh(cluster: Cluster):
    cluster.start_broker()
    cluster.start_worker(1, "--preload", "")
    cluster.wait_workers(1)
    client = cluster.client()
    a, b, c = _image("held-a"), _image("held-b"), _image("held-c")
    job_a, job_b, job_c = (client.submit([(f"{n}.png", d)], processor="noop") for n, d in
                           (("a", a), ("b", b), ("c", c)))
    for job in (job_a, job_b, job_c):
        assert client.wait(job, timeout=30)["state"] == "done"
    lock = cluster.data / "backup.lock"
    lock.write_text(f"{os.getpid()} {time.time()}\n")
    client.delete(job_a)
    client.delete(job_b)
    again = client.submit([("b-again.png", b)], processor="noop")  # the same bytes as b, while b is held
    time.sleep(1.0)
    assert _blob(cluster.data, a).exists() and _blob(cluster.data, b).exists(), "deleted while a backup ran"
    lock.unlink()
    wait_for(lambda: not _blob(cluster.data, a).exists(), 10, what="held deletions made once the lock is gone")
    assert _blob(cluster.data, b).exists(), "a held blob a new job refers to was deleted"
    assert client.wait(again, timeout=30)["state"] == "done"
    assert bytes(client.fetch_result(client.status(again)["tasks"][0]["task_id"])[1]) == b
    client.delete(job_c)
    wait_for(lambda: not _blob(cluster.data, c).exists(), 10, what="a deletion with no backup running")
    # a lock left by a crashed backup (over an hour old) holds nothing
    lock.write_text("999999 0\n")
    os.utime(lock, (time.time() - 7200, time.time() - 7200))
    client.delete(again)
    wait_for(lambda: not _blob(cluster.data, b).exists(), 10, what="a deletion despite a stale lock")


def test_backup_refuses_a_busy_destination_or_a_live_backup(cluster: Cluster, tmp_path: Path):
    cluster.start_broker()
    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("x")
    r = _backup_cli(cluster, str(full), "--data", str(cluster.data))
    assert r.returncode == 1 and "not an empty folder" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    r = _backup_cli(cluster, str(cluster.data / "inside"), "--data", str(cluster.data))
    assert r.returncode == 1 and "outside the data dir" in r.stderr, r.stderr
    (cluster.data / "backup.lock").write_text(f"{os.getpid()} {time.time()}\n")  # this test's pid: alive
    r = _backup_cli(cluster, str(tmp_path / "new"), "--data", str(cluster.data))
    assert r.returncode == 1 and f"another backup (pid {os.getpid()})" in r.stderr, r.stderr
    (cluster.data / "backup.lock").write_text("999999 0\n")  # a dead backup's: taken over
    alive = cluster.client()
    alive.submit([("one.png", _image("one"))], processor="noop")
    report = _backup(cluster, tmp_path / "new")
    assert report["missing"] == [] and not (cluster.data / "backup.lock").exists()
    assert report["blobs"] == report["linked"] == 1  # the same file system: hard links
    r = _backup_cli(cluster, str(tmp_path / "x"), "--data", str(tmp_path / "nothing"))
    assert r.returncode == 1 and "no cutq database" in r.stderr, r.stderr


def test_a_copied_backup_of_a_curve_broker_carries_its_keys(cluster: Cluster, secure: Keys,  # noqa: F811
                                                              tmp_path: Path):
    alice = cluster.client(credentials=secure.creds("alice"))
    photo = _image("curve")
    job = alice.submit([("k.png", photo)], processor="noop")
    dest = tmp_path / "backup"
    report = _backup(cluster, dest, "--copy")
    assert report["copied"] == report["blobs"] == 1 and report["linked"] == 0 and report["key_files"] > 0
    for f in (dest / "keys").rglob("*"):
        assert _mode(f) == (0o700 if f.is_dir() else 0o600), f
    copy = Cluster(tmp_path / "copy")
    copy.tmp.mkdir()
    copy.data = dest
    copy.credentials = secure.creds("root")  # the same keys open the copy
    try:
        copy.start_broker()
        assert "CURVE" in (copy.tmp / "broker.log").read_text()
        same = copy.client(credentials=secure.creds("alice"))
        assert same.status(job)["total"] == 1
        assert bytes(same.fetch_result(same.status(job)["tasks"][0]["task_id"], "input")[1]) == photo
        assert copy.client(credentials=secure.creds("bob")).list_jobs()["total"] == 0
    finally:
        copy.stop()
