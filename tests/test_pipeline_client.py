"""shared/pipeline.py: a window of submissions in flight on one DEALER, acknowledgements matched
by request id, against a real broker process; and the small-image path it mostly exercises
(an image of inline_blob_bytes or less is kept in the database, in the transaction that
names it: no file, same answers)."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import pytest

from shared.client import BrokerUnavailable, CutqError
from shared.pipeline import PipelinedSubmitter
from tests.cluster import Cluster, free_port, wait_for

PNG = b"\x89PNG\r\n\x1a\n"


def _image(i: int, size: int = 64) -> bytes:
    return PNG + hashlib.shake_256(i.to_bytes(8, "big")).digest(size - len(PNG))


def _committed(data: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(f"file:{data / 'cutq.db'}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


@pytest.mark.timeout(180)
def test_2000_one_image_jobs_from_one_thread_all_acknowledged_and_stored(cluster: Cluster):
    cluster.start_broker()
    client = cluster.client(timeout=30)
    window, peak = 64, 0
    start = time.perf_counter()
    with PipelinedSubmitter(cluster.endpoint, window=window) as s:
        futures = []
        for i in range(2000):
            futures.append(s.submit([(f"p{i}.png", _image(i))], processor="noop", tenant=f"t{i % 3}"))
            peak = max(peak, s.in_flight)
    pipelined = time.perf_counter() - start
    assert 1 < peak <= window  # it did pipeline, within its window
    assert all(f.done() for f in futures)  # leaving the block waited for every acknowledgement
    job_ids = [f.result() for f in futures]
    assert len(set(job_ids)) == 2000
    assert all(len(f.data["tasks"]) == 1 for f in futures)
    assert client.list_jobs(limit=1)["total"] == 2000
    assert client.stats()["queued"] == 2000
    # every acknowledged job is committed with its image: rows and bytes, as another process sees them
    rows = _committed(cluster.data, "SELECT t.job_id, t.name, d.data FROM tasks t "
                                    "JOIN blob_data d ON d.digest = t.input_digest")
    stored = {job: (name, bytes(data)) for job, name, data in rows}
    for i, job in enumerate(job_ids):
        assert stored[job] == (f"p{i}.png", _image(i)), i
    start = time.perf_counter()
    for i in range(200):  # the same one-image jobs, one round trip each, for comparison
        client.submit([(f"s{i}.png", _image(10_000 + i))], processor="noop")
    print(f"pipelined: {2000 / pipelined:.0f} jobs/s; one at a time: {200 / (time.perf_counter() - start):.0f} jobs/s")


def test_a_refusal_fails_its_own_submission_only(cluster: Cluster):
    cluster.start_broker("--max-queued", "5")
    with PipelinedSubmitter(cluster.endpoint, window=8) as s:
        good = [s.submit([(f"g{i}.png", _image(i))], processor="noop") for i in range(5)]
        bad = s.submit([("x.png", _image(99))], processor="noop")  # the sixth: the queue is full
        odd = s.submit([("y.png", _image(100))], processor="not-a-processor")
        with pytest.raises(CutqError, match="at least one image"):
            s.submit([])
    assert all(len(f.result()) == 12 for f in good)
    assert isinstance(bad.exception(), CutqError) and bad.exception().code == "queue_full"
    with pytest.raises(CutqError) as e:
        odd.result()
    assert e.value.code == "bad_request" and "unknown processor" in str(e.value)


def test_a_silent_broker_fails_what_is_in_flight_and_nothing_is_sent_twice(tmp_path: Path):
    import zmq

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)  # accepts, never answers
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    router.bind(endpoint)
    try:
        with PipelinedSubmitter(endpoint, window=4, timeout=0.5, context=ctx) as s:
            first = [s.submit([(f"{i}.png", _image(i))], processor="noop") for i in range(4)]
            late = s.submit([("late.png", _image(9))], processor="noop")  # waits for a slot: gives up
            assert all(isinstance(f.exception(), BrokerUnavailable) for f in first)
            with pytest.raises(BrokerUnavailable):
                late.result(timeout=0.5)
            s.close()
        received = 0
        while router.poll(100):
            router.recv_multipart()
            received += 1
        assert received == 5  # each sent once, none again after the timeout
    finally:
        router.close(0)
        ctx.term()


def test_small_images_live_in_the_database_and_big_ones_in_files(cluster: Cluster):
    cluster.start_broker()
    cluster.start_worker(1, "--preload", "")
    cluster.wait_workers(1)
    client = cluster.client()
    small, big = _image(1, 1000), _image(2, 50_000)
    jobs = [client.submit([(name, data)], processor="noop") for name, data in (("s.png", small), ("b.png", big))]
    for job in jobs:
        assert client.wait(job, timeout=30)["state"] == "done"
    inline = {d for (d,) in _committed(cluster.data, "SELECT digest FROM blob_data")}
    files = {f.name for f in (cluster.data / "blobs").glob("??/??/*")}
    small_d, big_d = hashlib.sha256(small).hexdigest(), hashlib.sha256(big).hexdigest()
    assert inline == {small_d} and files == {big_d}
    for job, want in zip(jobs, (small, big), strict=True):
        task = client.status(job)["tasks"][0]["task_id"]
        assert client.fetch_result(task)[1] == want and client.fetch_result(task, "input")[1] == want
    client.delete(jobs[0])
    wait_for(lambda: not _committed(cluster.data, "SELECT digest FROM blob_data"), 10, what="the small image to go")
