"""The core pipeline end to end: real broker and worker processes, real sockets,
real SQLite, real rembg inference on real photos."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import zmq
from PIL import Image

from shared import protocol as p
from tests.cluster import Cluster, wait_for


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.mark.timeout(180)  # real inference; waits up to 120 s
def test_rembg_result_is_pixel_identical_to_rembg_remove(cluster: Cluster, needs_model, photos):
    """The queue adds nothing and loses nothing: same bytes in, same cut-out as rembg itself."""
    import rembg

    cluster.start_broker()
    cluster.start_worker(1, "--threads", "1")
    cluster.wait_workers(1)  # announced, so the submit is not told that no worker serves u2netp
    client = cluster.client()
    options = {"model": "u2netp"}
    job = client.submit([("astronaut.png", photos["astronaut.png"]), ("rocket.jpg", photos["rocket.jpg"])],
                        options=options)
    status = client.wait(job, timeout=120)
    assert status["state"] == "done", status
    session = rembg.new_session("u2netp", sess_opts=_single_thread_opts())
    for task in status["tasks"]:
        meta, data = client.fetch_result(task["task_id"])
        assert meta["ext"] == "png"
        expected = rembg.remove(photos[task["name"]], session=session)
        got, want = _pixels(data), _pixels(expected)
        assert got.shape == want.shape and got.shape[2] == 4
        assert np.array_equal(got, want), f"{task['name']}: {np.count_nonzero(got != want)} values differ"


def _single_thread_opts():
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return opts


def test_corrupt_file_fails_alone_and_cli_names_it(cluster: Cluster, needs_model, photos, tmp_path):
    cluster.start_broker()
    cluster.start_worker(2)
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "chelsea.png").write_bytes(photos["chelsea.png"])
    (inputs / "coffee.png").write_bytes(photos["coffee.png"])
    (inputs / "broken.jpg").write_bytes(b"this is not a jpeg at all")
    out = tmp_path / "out"
    r = cluster.cli("submit", str(inputs), "--wait", "--out", str(out), "--json")
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    assert report["done"] == 2 and report["failed"] == 1
    assert [f["name"] for f in report["failures"]] == ["broken.jpg"]
    assert "not an image" in report["failures"][0]["error"] or "identify" in report["failures"][0]["error"]
    assert sorted(x.name for x in out.iterdir()) == ["chelsea.png", "coffee.png"]
    with Image.open(out / "chelsea.png") as im:
        assert im.mode == "RGBA"
    # the same run without --json names the failure on stderr, one line, no traceback
    r = cluster.cli("submit", str(inputs / "broken.jpg"), "--wait")
    assert r.returncode == 1 and "broken.jpg" in r.stderr and "Traceback" not in r.stderr


def test_cancel_queued_job_is_never_dispatched(cluster: Cluster):
    cluster.start_broker()
    client = cluster.client()
    job = client.submit([(f"{i}.png", b"x" * 10) for i in range(5)], processor="noop")
    assert client.cancel(job)["cancelled"] == 5
    cluster.start_worker(2)
    cluster.wait_workers(1)
    other = client.submit([("a.png", b"y")], processor="noop")
    assert client.wait(other, timeout=30)["state"] == "done"  # the worker is taking work
    status = client.status(job)
    assert status["state"] == "cancelled"
    assert all(t["state"] == "cancelled" and t["attempts"] == 0 for t in status["tasks"])


def test_cancel_running_task_frees_slot_and_stores_nothing(cluster: Cluster):
    cluster.start_broker()
    cluster.start_worker(1, "--preload", "")
    client = cluster.client()
    job = client.submit([("slow.png", b"z")], processor="sleep", options={"seconds": 60})
    wait_for(lambda: client.status(job)["running"] == 1, 30, what="task to run")
    client.cancel(job)
    # the slot is free again: a new job runs to completion on the same single-slot worker
    quick = client.submit([("quick.png", b"q")], processor="sleep", options={"seconds": 0})
    assert client.wait(quick, timeout=30)["state"] == "done"
    status = client.status(job)
    assert status["tasks"][0]["state"] == "cancelled"
    with pytest.raises(Exception, match="no result"):
        client.fetch_result(status["tasks"][0]["task_id"])


def test_retry_requeues_failed_and_cancelled(cluster: Cluster):
    cluster.start_broker()
    client = cluster.client()
    job = client.submit([("a.png", b"1"), ("b.png", b"2")], processor="noop")
    client.cancel(job)
    cluster.start_worker(1, "--preload", "")
    assert client.retry(job)["requeued"] == 2
    status = client.wait(job, timeout=30)
    assert status["state"] == "done" and [t["attempts"] for t in status["tasks"]] == [1, 1]
    r = cluster.cli("retry", job, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["requeued"] == 0  # nothing left to retry


@pytest.mark.timeout(180)  # real inference twice; waits up to 2 x 60 s
def test_retry_of_failed_rembg_task_runs_it_again(cluster: Cluster, needs_model):
    cluster.start_broker()
    cluster.start_worker(1)
    cluster.wait_workers(1)
    client = cluster.client()
    job = client.submit([("bad.png", b"\x89PNG\r\n\x1a\n garbage")])
    status = client.wait(job, timeout=60)
    assert status["state"] == "failed" and status["tasks"][0]["attempts"] == 1  # input errors never auto-retry
    assert client.retry(job)["requeued"] == 1
    status = wait_for(lambda: (s := client.status(job))["state"] == "failed" and s["tasks"][0]["attempts"] == 2 and s,
                      60, what="second attempt")
    assert status["tasks"][0]["error"]


@pytest.mark.timeout(120)  # waits up to 60 s
def test_two_workers_share_a_batch(cluster: Cluster):
    cluster.start_broker()
    cluster.start_worker(1, "--preload", "", name="alpha")
    cluster.start_worker(1, "--preload", "", name="beta")
    cluster.wait_workers(2)
    client = cluster.client()
    job = client.submit([(f"{i}.png", b"p") for i in range(8)], processor="sleep", options={"seconds": 0.2})
    status = client.wait(job, timeout=60)
    assert status["state"] == "done"
    names = {w["id"]: w["name"] for w in client.workers()}
    used = {names.get(t["worker"], t["worker"]) for t in status["tasks"]}
    assert used == {"alpha", "beta"}, used


@pytest.mark.timeout(120)  # a broker restart; waits up to 60 s
def test_restarted_broker_holds_every_acknowledged_job(cluster: Cluster):
    cluster.start_broker()
    client = cluster.client()
    jobs = [client.submit([(f"{j}-{i}.png", bytes([i]) * 100) for i in range(10)], processor="noop")
            for j in range(5)]
    Cluster.kill9(cluster.broker)
    cluster.start_broker()
    client = cluster.client()
    assert client.stats()["queued"] == 50
    cluster.start_worker(4, "--preload", "")
    for job in jobs:
        status = client.wait(job, timeout=60)
        assert status["state"] == "done" and status["total"] == 10
        assert client.fetch_result(status["tasks"][3]["task_id"])[1] == bytes([3]) * 100


@pytest.mark.timeout(120)  # a 20 MB image; waits up to 60 s
def test_large_input_round_trips(cluster: Cluster):
    cluster.start_broker()
    cluster.start_worker(1, "--preload", "")
    client = cluster.client()
    big = random.Random(7).randbytes(20 * 1024 * 1024)
    job = client.submit([("big.png", big)], processor="noop")
    status = client.wait(job, timeout=60)
    assert status["state"] == "done"
    assert client.fetch_result(status["tasks"][0]["task_id"])[1] == big


def test_malformed_frames_leave_the_broker_serving(cluster: Cluster):
    cluster.start_broker()
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.connect(cluster.endpoint)
    rng = random.Random(1)
    garbage = [
        [b""], [b"hello"], [rng.randbytes(100)],
        [b"CUTQ0", b"STATS", b"\x80"],  # old version
        [p.VERSION, b"NOPE", b"\x80"],  # unknown type
        [p.VERSION, b"STATS", b"\xc1\xc1"],  # not msgpack
        [p.VERSION, b"STATS", b"\x93\x01\x02\x03"],  # msgpack, but not a map
        [p.VERSION, b"SUBMIT", b"\x81\xa3req\xa1x"],  # wrong field type
        [p.VERSION, b"CANCEL", b"\x80"],  # missing fields
        [p.VERSION, b"RESULTS", b"\x81\xa7results\x91\x80"],  # results from a non-worker
        [p.VERSION, b"DISPATCH", b"\x81\xa5tasks\x90"],  # a broker-only message
        *[[rng.randbytes(rng.randint(1, 64)) for _ in range(rng.randint(1, 5))] for _ in range(200)],
    ]
    for frames in garbage:
        raw.send_multipart(frames)
    errors = 0
    while raw.poll(500):
        reply = p.decode(raw.recv_multipart())
        assert isinstance(reply, p.Reply | p.Disconnect)
        errors += isinstance(reply, p.Reply) and not reply.ok
    assert errors >= 10  # the broker said what was wrong instead of going quiet
    raw.close(0)
    ctx.term()
    assert cluster.broker.poll() is None
    client = cluster.client()
    cluster.start_worker(1, "--preload", "")
    job = client.submit([("a.png", b"ok")], processor="noop")
    assert client.wait(job, timeout=30)["state"] == "done"


def test_cli_json_and_one_line_errors(cluster: Cluster, tmp_path):
    cluster.start_broker()
    f = tmp_path / "x.png"
    f.write_bytes(b"noop input")
    r = cluster.cli("submit", str(f), "--processor", "noop", "--json")
    job = json.loads(r.stdout)["job_id"]
    status = json.loads(cluster.cli("status", job, "--json").stdout)
    assert status["state"] == "queued" and status["queued"] == 1
    stats = json.loads(cluster.cli("stats", "--json").stdout)
    assert {k: stats[k] for k in ("queued", "running", "done", "failed", "cancelled")} == {
        "queued": 1, "running": 0, "done": 0, "failed": 0, "cancelled": 0}
    listed = json.loads(cluster.cli("list", "--state", "queued", "--json").stdout)
    assert [j["job_id"] for j in listed["jobs"]] == [job]
    assert json.loads(cluster.cli("workers", "--json").stdout) == {"workers": []}
    for args in (("status", "nosuchjob"), ("submit", str(tmp_path / "missing.png")),
                 ("submit", str(f), "--model", "not-a-model")):
        r = cluster.cli(*args)
        assert r.returncode != 0 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    r = cluster.cli("submit", str(f), "--model", "not-a-model")
    assert "unknown model" in r.stderr and "not-a-model" in r.stderr
    assert json.loads(cluster.cli("stats", "--json").stdout)["queued"] == 1  # the refusal stored nothing
    # no broker at all: one line, a distinct exit code
    r = subprocess_cli(cluster, "stats", endpoint="tcp://127.0.0.1:1")
    assert r.returncode == 3 and r.stderr.count("\n") == 1


def subprocess_cli(cluster: Cluster, *args: str, endpoint: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "cli", *args, "--connect", endpoint, "--timeout", "1"],
                          capture_output=True, text=True, env=cluster.env, timeout=30)
