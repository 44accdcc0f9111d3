"""A write the store cannot make durable is refused, never acknowledged, and loses nothing
already acknowledged: a full disk (a real, tiny tmpfs) and a database locked by another process."""

from __future__ import annotations

import os
import sqlite3
import subprocess

import pytest

from shared.client import CutqError
from tests.cluster import Cluster, wait_for


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_refuses_submission_and_keeps_acknowledged_ones(tmp_path, tiny_disk):
    cluster = Cluster(tmp_path)
    cluster.data = tiny_disk / "data"
    try:
        cluster.start_broker()
        client = cluster.client()
        acknowledged, refusal = [], None
        for i in range(40):
            payload = os.urandom(400_000)  # incompressible: fills the 6 MB disk in ~15 jobs
            try:
                acknowledged.append((client.submit([(f"{i}.png", payload)], processor="noop"), payload))
            except CutqError as e:
                refusal = e
                break
        assert refusal is not None, "the disk never filled"
        assert refusal.code == "storage" and "full" in str(refusal), refusal
        assert cluster.broker.poll() is None  # still serving
        assert client.stats()["queued"] == len(acknowledged)  # the refused one stored nothing
        listed = client.list_jobs(limit=1000)
        assert {j["job_id"] for j in listed["jobs"]} == {job for job, _ in acknowledged}
        for job, payload in acknowledged[:3]:
            task = client.status(job)["tasks"][0]
            assert client.fetch_result(task["task_id"], what="input")[1] == payload
    finally:
        cluster.stop()


def test_locked_database_refuses_then_recovers(cluster: Cluster):
    cluster.start_broker("--busy-timeout-ms", "200")
    client = cluster.client()
    first = client.submit([("a.png", b"1")], processor="noop")
    blocker = sqlite3.connect(cluster.data / "cutq.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(CutqError) as err:
            client.submit([("b.png", b"2")], processor="noop")
        assert err.value.code == "storage" and "locked" in str(err.value)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    second = client.submit([("c.png", b"3")], processor="noop")
    assert client.stats()["queued"] == 2
    cluster.start_worker(1, "--preload", "")
    for job in (first, second):
        assert client.wait(job, timeout=30)["state"] == "done"
    assert wait_for(lambda: client.stats()["done"] == 2, 10)
