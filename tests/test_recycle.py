"""Memory hygiene: a worker replaces its inference process between tasks after N tasks
(or above an RSS ceiling) without losing a task."""

from __future__ import annotations

from pathlib import Path

from tests.cluster import Cluster


def _slot_pids(worker_pid: int) -> set[int]:
    """The worker's child processes (its slots), read from /proc."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == worker_pid:
            pids.add(int(stat.parent.name))
    return pids


def test_slot_process_is_recycled_after_n_tasks_without_losing_one(cluster: Cluster):
    cluster.start_broker()
    worker = cluster.start_worker(1, "--preload", "", "--recycle-after", "2")
    cluster.wait_workers(1)
    client = cluster.client()
    seen: set[int] = set()
    for round_ in range(3):
        job = client.submit([(f"{round_}-{i}.png", b"x") for i in range(2)], processor="sleep",
                            options={"seconds": 0.05})
        seen |= _slot_pids(worker.pid)
        status = client.wait(job, timeout=30)
        assert status["state"] == "done" and all(t["attempts"] == 1 for t in status["tasks"])
    seen |= _slot_pids(worker.pid)
    # one slot, 6 tasks, recycled every 2: before tasks 3 and 5, so three processes served them
    assert (cluster.tmp / "worker-w0.log").read_text().count("recycling slot 0") == 2
    assert len(seen) >= 2, seen  # and the worker's child really was replaced


def test_slot_recycled_above_rss_ceiling(cluster: Cluster):
    cluster.start_broker()
    cluster.start_worker(1, "--preload", "", "--recycle-rss-mb", "1")  # any real process is above 1 MiB
    client = cluster.client()
    job = client.submit([(f"{i}.png", b"x") for i in range(3)], processor="sleep", options={"seconds": 0})
    assert client.wait(job, timeout=30)["state"] == "done"
    assert "recycling slot 0" in (cluster.tmp / "worker-w0.log").read_text()
