"""Micro-batching in the worker (--batch N): which tasks share a run, cancels, and a real job."""

from __future__ import annotations

import io
from collections import deque

import numpy as np
import pytest
from PIL import Image

from shared.config import WorkerConfig
from tests.cluster import Cluster
from worker.daemon import WorkerDaemon
from worker.processors import models_on_disk


def task(task_id: int, processor: str = "rembg", model: str | None = "u2netp") -> dict:
    return {"task_id": task_id, "attempt": 1, "processor": processor,
            "options": {"model": model} if model else {}}


@pytest.fixture
def daemon():
    d = WorkerDaemon(WorkerConfig(concurrency=1, batch_size=3, preload_models=()))
    yield d
    d._ctx.term()


def test_a_batch_is_tasks_of_one_model_in_queue_order(daemon):
    daemon.waiting = deque((t, b"x") for t in (
        task(1), task(2, "sleep", None), task(3, model="u2net"), task(4), task(5, model=None), task(6), task(7)))
    # u2netp is also the default model: task 5 (no model option) joins
    assert [t["task_id"] for t, _ in daemon._next_batch()] == [1, 4, 5]
    assert [t["task_id"] for t, _ in daemon._next_batch()] == [2]  # sleep runs alone
    assert [t["task_id"] for t, _ in daemon._next_batch()] == [3]
    assert [t["task_id"] for t, _ in daemon._next_batch()] == [6, 7]
    assert not daemon.waiting


def test_batching_off_takes_one_task(daemon):
    daemon.config = WorkerConfig(concurrency=1, batch_size=1, preload_models=())
    daemon.waiting = deque((task(i), b"x") for i in (1, 2))
    assert [t["task_id"] for t, _ in daemon._next_batch()] == [1]


def test_the_worker_asks_for_slots_times_batch(daemon):
    sent = []
    daemon._send = sent.append
    daemon._announce()
    assert (sent[0].slots, sent[0].threads) == (3, daemon.settings.threads)


def test_cancelling_one_task_of_a_batch_runs_the_others_again(daemon, monkeypatch):
    slot = daemon.slots[0]
    monkeypatch.setattr(slot, "kill", lambda: setattr(slot, "items", []))
    monkeypatch.setattr(slot, "start", lambda: None)
    slot.items = [(task(1), b"a"), (task(2), b"b"), (task(3), b"c")]
    daemon.waiting = deque([(task(9), b"z")])
    daemon._on_cancel({2})
    assert [(t["task_id"], d) for t, d in daemon.waiting] == [(1, b"a"), (3, b"c"), (9, b"z")]
    assert daemon._held() == [t for t, _ in daemon.waiting]


def test_a_slot_crash_fails_every_task_of_its_batch(daemon):
    slot = daemon.slots[0]
    slot.items = [(task(1), b"a"), (task(2), b"b")]

    class Dead:
        def poll(self):
            raise EOFError

        def close(self):
            pass

    slot.conn, slot.ready = Dead(), True
    daemon._read_slot(slot)
    assert [(r["task_id"], r["ok"], r["error_kind"]) for r, _ in daemon.outbox] == [
        (1, False, "transient"), (2, False, "transient")]
    assert not slot.busy


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif("u2netp" not in models_on_disk(), reason="u2netp weights are missing")
def test_a_job_through_a_batching_worker_is_pixel_identical(cluster: Cluster, photos):
    import onnxruntime as ort
    import rembg

    cluster.start_broker()
    cluster.start_worker(1, "--threads", "1", "--batch", "3", "--preload", "u2netp")
    assert cluster.wait_workers(1)[0]["slots"] == 3
    client = cluster.client()
    names = ("chelsea.png", "rocket.jpg", "coffee.png", "astronaut.png")
    job = client.submit([(n, photos[n]) for n in names], options={"model": "u2netp"})
    status = client.wait(job, timeout=200)
    assert status["state"] == "done", status
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = rembg.new_session("u2netp", sess_opts=opts)
    for t in status["tasks"]:
        _, data = client.fetch_result(t["task_id"])
        got = np.asarray(Image.open(io.BytesIO(data)))
        want = np.asarray(Image.open(io.BytesIO(rembg.remove(photos[t["name"]], session=session))))
        assert np.array_equal(got, want), t["name"]
