"""Streamed uploads, delete and purge, and the local size cap, on real processes.

A job over one part (8 MiB) goes up as UploadStart, parts with a few in flight, then
one Submit naming the upload: the broker's memory stays flat whatever the job's size
(its RSS is sampled from /proc while a job streams in), every result comes back
byte-identical (noop returns its input), and a broker killed mid-upload leaves either
the whole job or nothing, its orphan blobs swept at the next start.
`CUTQ_BIG_JOB_MB=2048` makes the soak test the 2 GB one.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.client import BrokerUnavailable, Client, CutqError
from shared.uploads import PART_BYTES
from tests.cluster import Cluster, sample_photo, wait_for
from tests.test_security import Keys, keys, secure  # noqa: F401  (fixtures)

MiB = 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n"


def image(seed: int, size: int) -> bytes:
    """A distinct 'image' a noop worker returns as it is (PNG magic, then seeded noise)."""
    return PNG + random.Random(seed).randbytes(size - len(PNG))


def lazily(n: int, size: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """n images made only when asked for: the test never holds the job either."""
    for i in range(n):
        yield f"img-{i:05d}.png", image(seed + i, size)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssSampler(threading.Thread):
    """Samples a process's resident set every 20 ms until stopped; `peak` is the highest seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.start_rss = self.peak = rss_bytes(pid)
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self.samples += 1
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak - self.start_rss


def blob_files(data: Path) -> list[Path]:
    """Stored blobs (not the temporary folder)."""
    root = data / "blobs"
    return [f for f in root.glob("??/??/*") if f.is_file()] if root.exists() else []


def check_results(client: Client, job_id: str, digests: list[str]) -> None:
    """Every task done, and its result the same bytes as its input (by digest, one at a time)."""
    status = client.status(job_id)
    assert [t["state"] for t in status["tasks"]] == ["done"] * len(digests), status["state"]
    for task, want in zip(status["tasks"], digests, strict=True):
        _, data = client.fetch_result(task["task_id"])
        assert hashlib.sha256(data).hexdigest() == want, task["name"]


# ---------------------------------------------------------------- streamed jobs


def test_a_20_mb_job_streams_in_parts_and_every_result_comes_back_identical(cluster: Cluster):
    cluster.start_broker()
    cluster.start_worker(1, "--preload", "")
    cluster.wait_workers(1)
    client = cluster.client()
    files = [(f"photo-{i}.png", image(i, 4 * MiB + i)) for i in range(5)]  # 20 MiB: three parts
    seen: list[tuple[int, int | None]] = []
    job_id = client.submit(files, processor="noop", progress=lambda sent, total: seen.append((sent, total)))
    total = sum(len(d) for _, d in files)
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert len(seen) >= 4, f"expected one progress call per part (3 parts), got {seen}"
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)
    assert client.wait(job_id, timeout=60)["state"] == "done"
    check_results(client, job_id, [hashlib.sha256(d).hexdigest() for _, d in files])
    assert [t["name"] for t in client.status(job_id)["tasks"]] == [n for n, _ in files]  # parts joined in order


def test_a_small_job_still_goes_in_one_submit(cluster: Cluster):
    cluster.start_broker()
    client = cluster.client()
    seen: list[tuple[int, int | None]] = []
    job_id = client.submit([("a.png", image(1, 1000)), ("b.png", image(2, 2000))], processor="noop",
                           progress=lambda sent, total: seen.append((sent, total)))
    assert seen == [(0, 3000), (3000, 3000)]
    assert client.status(job_id)["total"] == 2


@pytest.mark.soak
@pytest.mark.timeout(600)  # CUTQ_BIG_JOB_MB of images up, processed and back (300 MB: about a minute)
def test_a_big_streamed_job_keeps_the_broker_rss_flat_and_comes_back_identical(cluster: Cluster):
    mb = int(os.environ.get("CUTQ_BIG_JOB_MB", "300"))
    size = 2 * MiB
    n = max(1, mb * MiB // size)
    cluster.start_broker()
    cluster.start_worker(1, "--preload", "")
    cluster.wait_workers(1)
    assert cluster.broker is not None
    client = cluster.client(timeout=3)  # per part: the whole upload takes longer (300 MB: ~4 s here)
    sampler = RssSampler(cluster.broker.pid)
    sampler.start()
    began = time.monotonic()
    job_id = client.submit(lazily(n, size), processor="noop", total_bytes=n * size)
    upload_s = time.monotonic() - began
    grew = sampler.stop()
    after_upload = sampler.peak
    whole = RssSampler(cluster.broker.pid)
    whole.start_rss = sampler.start_rss
    whole.start()
    status = client.wait(job_id, timeout=max(120, mb // 2))
    whole.stop()
    print(f"\nbig upload: {n} x {size // MiB} MiB = {n * size / MiB:.0f} MiB in {upload_s:.1f}s "
          f"({n * size / MiB / upload_s:.0f} MiB/s); broker RSS {sampler.start_rss / MiB:.0f} MiB at start, "
          f"peak {after_upload / MiB:.0f} MiB while uploading (+{grew / MiB:.0f} MiB, {sampler.samples} samples), "
          f"peak {whole.peak / MiB:.0f} MiB while processing; client timeout {client.timeout:g}s per part")
    assert grew < 300 * MiB, f"broker RSS grew by {grew / MiB:.0f} MiB while a {mb} MB job streamed in"
    assert status["state"] == "done" and status["done"] == n
    check_results(client, job_id, [hashlib.sha256(d).hexdigest() for _, d in lazily(n, size)])


def test_submit_paths_reads_the_files_part_by_part(cluster: Cluster):
    cluster.start_broker()
    folder = cluster.tmp / "many"
    folder.mkdir()
    n = 160
    for i in range(n):
        (folder / f"f{i:03d}.png").write_bytes(image(1000 + i, MiB))
    client = cluster.client(timeout=30)
    me = RssSampler(os.getpid())
    me.start()
    job_id = client.submit_paths([folder], processor="noop")
    grew = me.stop()
    print(f"\nsubmit_paths of {n} MiB: this process's RSS +{grew / MiB:.0f} MiB")
    assert grew < 100 * MiB, f"the client grew by {grew / MiB:.0f} MiB sending {n} MiB of files"
    assert client.status(job_id, tasks=False)["total"] == n


@pytest.mark.parametrize("kill_after", ["some parts", "every part"])
@pytest.mark.timeout(90)  # a kill -9, a restart and the orphan sweep
def test_broker_killed_mid_upload_leaves_nothing_and_its_blobs_are_swept(cluster: Cluster, kill_after: str):
    cluster.start_broker()
    client = cluster.client(timeout=3)
    n, size = 64, 1 * MiB  # eight parts: more than the client keeps in flight
    assert cluster.broker is not None
    broker = cluster.broker
    durable: list[int] = []

    def progress(sent: int, total: int | None) -> None:
        if broker.poll() is not None:
            return
        if (kill_after == "some parts" and sent >= PART_BYTES) or (kill_after == "every part" and sent == total):
            durable.append(len(blob_files(cluster.data)))
            Cluster.kill9(broker)

    job_id = None
    try:
        job_id = client.submit(lazily(n, size, seed=100), processor="noop", progress=progress,
                               total_bytes=n * size, timeout=3)
    except BrokerUnavailable:
        pass
    assert durable and durable[0] > 0, "the broker was to be killed after some parts were stored"
    if kill_after == "some parts":
        assert durable[0] < n, "killed too late: the whole upload was already stored"
    cluster.start_broker()
    fresh = cluster.client()
    if job_id is None:  # never acknowledged: nothing of it exists
        assert fresh.list_jobs()["total"] == 0
        assert fresh.stats()["queued"] == 0
        wait_for(lambda: not blob_files(cluster.data), 20, what="the interrupted upload's blobs to be swept")
    else:  # acknowledged: all of it
        assert fresh.status(job_id)["total"] == n
        wait_for(lambda: "swept" in (cluster.tmp / "broker.log").read_text(), 10, what="the sweep's log line")


# ---------------------------------------------------------------- the local cap


def test_an_image_over_the_message_cap_is_refused_before_anything_is_sent(cluster: Cluster):
    cluster.start_broker()
    small, big = cluster.tmp / "small.png", cluster.tmp / "big.png"
    small.write_bytes(image(1, 1000))
    big.write_bytes(image(2, 2 * MiB))
    r = cluster.cli("submit", str(small), str(big), "--processor", "noop", "--max-message-mb", "1")
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "big.png" in r.stderr and "not sent" in r.stderr, r.stderr
    capped = Client(cluster.endpoint, timeout=5, max_message_bytes=1 * MiB)
    try:
        for files in ([("ok.png", image(3, 100)), ("big.png", big.read_bytes())],
                      iter([("big.png", big.read_bytes()), ("ok.png", image(3, 100))])):
            with pytest.raises(CutqError) as e:
                capped.submit(files, processor="noop")
            assert e.value.code == "too_large"
        with pytest.raises(CutqError) as e:
            capped.submit_paths([small, big], processor="noop")
        assert e.value.code == "too_large"
    finally:
        capped.close()
    assert cluster.client().list_jobs()["total"] == 0  # small.png went nowhere either


# ---------------------------------------------------------------- the command line


def _cli_json(cluster: Cluster, *args: str) -> dict:
    r = cluster.cli(*args, "--json")
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return json.loads(r.stdout)


def test_submit_draws_its_upload_progress_only_on_a_terminal(cluster: Cluster):
    cluster.start_broker()
    folder = cluster.tmp / "in"
    folder.mkdir()
    for i in range(3):
        (folder / f"p{i}.png").write_bytes(image(50 + i, 4 * MiB))
    master, slave = pty.openpty()
    try:
        r = subprocess.run([sys.executable, "-m", "cli", "submit", str(folder), "--processor", "noop",
                            "--connect", cluster.endpoint], stdout=subprocess.PIPE, stderr=slave,
                           env=cluster.env, timeout=60, check=False)
        os.close(slave)
        drawn = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(master)
    assert r.returncode == 0, drawn
    text = drawn.decode()
    assert "\ruploading" in text and "12.0 MiB / 12.0 MiB (100%)" in text, text
    assert text.count("\n") == 1, "one line, redrawn"
    assert "submitted job" in r.stdout.decode()
    r = cluster.cli("submit", str(folder), "--processor", "noop")  # stderr a pipe: no progress
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_delete_and_purge_through_the_cli(cluster: Cluster):
    cluster.start_broker()
    cluster.start_worker(1, "--preload", "")
    cluster.wait_workers(1)
    client = cluster.client()
    jobs = [client.submit([(f"j{i}.png", image(200 + i, 5000))], processor="noop") for i in range(3)]
    for job in jobs:
        assert client.wait(job, timeout=30)["state"] == "done"
    assert len(blob_files(cluster.data)) == 3  # a noop result is its input: one blob each

    assert _cli_json(cluster, "delete", jobs[0]) == {"job_id": jobs[0], "deleted": True}
    r = cluster.cli("status", jobs[0])
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert f"job {jobs[0]} is gone: deleted by" in r.stderr, r.stderr
    assert cluster.cli("delete", jobs[0]).returncode == 2  # once

    assert _cli_json(cluster, "purge", "--state", "failed")["deleted"] == 0
    assert _cli_json(cluster, "purge", "--older-than", "1h")["deleted"] == 0  # all submitted just now
    r = cluster.cli("purge", "--older-than", "soon")
    assert r.returncode == 2 and "soon" in r.stderr  # argparse's usage error
    purged = _cli_json(cluster, "purge", "--state", "done")
    assert purged["deleted"] == 2 and sorted(purged["job_ids"]) == sorted(jobs[1:])
    assert _cli_json(cluster, "list")["total"] == 0
    wait_for(lambda: not blob_files(cluster.data), 10, what="the deleted jobs' blobs to go")
    r = cluster.cli("stats")
    assert r.returncode == 0 and "storage: database" in r.stdout and "0 blobs" in r.stdout, r.stdout


@pytest.mark.timeout(120)  # 1,005 small jobs through a noop worker
def test_purge_asks_again_while_the_broker_says_there_are_more(cluster: Cluster):
    cluster.start_broker()
    cluster.start_worker(1, "--preload", "")
    cluster.wait_workers(1)
    client = cluster.client()
    n = 1005
    jobs = [client.submit([("x.png", PNG + i.to_bytes(4, "big"))], processor="noop") for i in range(n)]
    wait_for(lambda: client.stats()["done"] == n, 60, interval=0.5, what="every job done")
    r = client.purge("done")
    assert r["deleted"] == n and sorted(r["job_ids"]) == sorted(jobs)
    assert client.list_jobs()["total"] == 0


def test_a_client_key_purges_only_its_own_tenant(cluster: Cluster, secure: Keys):  # noqa: F811
    cluster.start_worker(1, "--preload", "", env=secure.worker_env("w1"))
    cluster.wait_workers(1)
    mine: dict[str, list[str]] = {}
    for name in ("alice", "bob"):
        c = cluster.client(credentials=secure.creds(name))
        mine[name] = [c.submit([(f"{name}{i}.png", image({"alice": 300, "bob": 400}[name] + i, 3000))], processor="noop")
                      for i in range(2)]
        for job in mine[name]:
            assert c.wait(job, timeout=30)["state"] == "done"
    as_alice = ("--key", str(secure.certs["alice"]), "--server-key", str(secure.server))
    r = cluster.cli("purge", "--tenant", "B", "--json", *as_alice)
    assert r.returncode == 2 and "not found" in r.stderr, r.stderr
    r = cluster.cli("delete", mine["bob"][0], "--json", *as_alice)
    assert r.returncode == 2 and "not found" in r.stderr, r.stderr
    purged = _cli_json(cluster, "purge", *as_alice)
    assert sorted(purged["job_ids"]) == sorted(mine["alice"])
    admin = cluster.client()
    assert sorted(j["job_id"] for j in admin.list_jobs()["jobs"]) == sorted(mine["bob"])
    r = cluster.cli("status", mine["alice"][0], *as_alice)
    assert r.returncode == 2 and "is gone: purged by alice" in r.stderr, r.stderr


@pytest.mark.slow
@pytest.mark.timeout(180)  # two real cutouts
def test_status_marks_a_cached_task_and_no_cache_runs_it_again(cluster: Cluster, needs_model):
    cluster.start_broker()
    cluster.start_worker(1)
    cluster.wait_workers(1, timeout=120)
    photo = str(sample_photo("astronaut.png"))
    first = _cli_json(cluster, "submit", photo, "--wait")
    assert first["state"] == "done"
    again = _cli_json(cluster, "submit", photo, "--wait")
    fresh = _cli_json(cluster, "submit", photo, "--wait", "--no-cache")
    assert [t["cached"] for t in _cli_json(cluster, "status", again["job_id"])["tasks"]] == [True]
    assert [t["cached"] for t in _cli_json(cluster, "status", fresh["job_id"])["tasks"]] == [False]
    r = cluster.cli("status", again["job_id"])
    assert r.returncode == 0 and "done (cached)" in r.stdout, r.stdout
    r = cluster.cli("status", fresh["job_id"])
    assert r.returncode == 0 and "(cached)" not in r.stdout, r.stdout
