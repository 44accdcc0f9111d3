"""Regressions from the outside audit (issue 8), each on real processes.

Private data dir, revoked keys losing their event streams, tenants blind to each
other's numbers, a whole-message size cap answered at once, throttled warnings,
a full disk that leaves nothing stuck once space is freed (no restart), and a
re-queued task that keeps its place.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
import zmq

from shared.client import Client, CutqError
from tests.cluster import Cluster, wait_for
from tests.test_security import Keys, keys, secure  # noqa: F401  (fixtures)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _noop(n: int, tag: str, size: int = 16) -> list[tuple[str, bytes]]:
    return [(f"{tag}-{i}.png", b"\x89PNG\r\n\x1a\n" + os.urandom(size)) for i in range(n)]


# ---------------------------------------------------------------- 1. a private data dir


def test_data_dir_and_every_file_in_it_are_private_whatever_the_umask(cluster: Cluster):
    cluster.data.mkdir(mode=0o755)
    os.chmod(cluster.data, 0o755)  # as `mkdir` under umask 022 leaves it
    old = os.umask(0o022)
    try:
        cluster.start_broker()
    finally:
        os.umask(old)
    client = cluster.client()
    job = client.submit(_noop(3, "p"), processor="noop")  # writes the WAL and SHM
    assert client.status(job)["total"] == 3
    assert _mode(cluster.data) == 0o700
    files = [cluster.data / n for n in ("cutq.db", "cutq.db-wal", "cutq.db-shm")]
    assert all(f.exists() for f in files), list(cluster.data.iterdir())
    assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
    assert "readable by group or others" in (cluster.tmp / "broker.log").read_text()


# ---------------------------------------------------------------- 3. revoked keys lose their streams


def test_a_revoked_key_stops_receiving_its_event_stream(cluster: Cluster, secure: Keys):
    secure.add("dave", "client", "D")
    secure.add("erin", "client", "D")
    dave = cluster.client(timeout=2.0, credentials=secure.creds("dave"))
    admin = cluster.client(timeout=5.0, credentials=secure.creds("root"))
    dave.subscribe(ttl=300)  # a lease far longer than the test: only revocation can end it
    admin.subscribe(ttl=300)
    assert wait_for(lambda: any(e["kind"] == "stats" for e in dave.next_events(1.0)), 10, what="dave's stats")
    secure.revoke("dave")

    def refused() -> bool:
        try:
            dave.stats()
        except CutqError as e:
            return e.code == "unauthorized"
        return False

    wait_for(refused, 10, what="dave's requests to be refused")
    dave.next_events(0.2)  # whatever was pushed before the broker saw the revocation
    with Client(cluster.endpoint, timeout=5.0, credentials=secure.creds("erin")) as erin:
        job = erin.submit(_noop(2, "erin"), processor="noop")
    # barrier: the admin hears erin's job and two more stats ticks; dave would have too
    seen: list[dict] = []
    wait_for(lambda: seen.extend(admin.next_events(0.5)) or any(e.get("job_id") == job for e in seen), 10)
    ticks = len([e for e in seen if e["kind"] == "stats"])
    wait_for(lambda: seen.extend(admin.next_events(0.5)) or
             len([e for e in seen if e["kind"] == "stats"]) >= ticks + 2, 10)
    # already in dave's socket if it was sent: a short read finds it
    assert dave.next_events(0.5) == []


# ---------------------------------------------------------------- 4. tenants blind to each other


def test_a_client_key_sees_only_its_own_tenants_numbers_and_no_worker_detail(cluster: Cluster, secure: Keys):
    cluster.start_worker(2, "--preload", "", env=secure.worker_env("w1"))
    cluster.wait_workers(1)
    alice = cluster.client(credentials=secure.creds("alice"))
    bob = cluster.client(credentials=secure.creds("bob"))
    admin = cluster.client(credentials=secure.creds("root"))
    job = alice.submit(_noop(40, "a"), processor="noop")
    assert alice.wait(job, timeout=30)["state"] == "done"
    # positive control: alice and the admin do see the throughput
    wait_for(lambda: alice.stats()["tasks_per_s"] > 0, 15, what="alice's throughput")
    assert admin.stats()["tasks_per_s"] > 0
    b = bob.stats()
    assert b["tasks_per_s"] == 0 and b["images_per_s"] == 0 and b["eta_s"] is None
    assert not any(b["history"]), b["history"]
    assert b["slots_used"] == 0 and b["workers_busy"] == 0 and b["paused_tenants"] == []
    assert set(b["by_tenant"]) == {"B"}
    shown = bob.workers()
    assert len(shown) == 1 and shown[0]["count"] == 1 and shown[0]["slots"] == 2
    assert shown[0]["host"] == "" and shown[0]["pid"] == 0 and shown[0]["tasks"] == []
    assert shown[0]["done"] == 0
    full = admin.workers()
    assert full[0]["host"] and full[0]["pid"] > 0 and full[0]["done"] >= 40


# ---------------------------------------------------------------- 5. one cap for the whole message


def test_a_submission_over_the_message_cap_is_refused_at_once_and_stores_nothing(cluster: Cluster):
    cluster.start_broker("--max-message-mb", "1")
    client = cluster.client(timeout=5.0)
    two = [("a.png", os.urandom(600_000)), ("b.png", os.urandom(600_000))]  # each frame under the cap
    started = time.monotonic()
    with pytest.raises(CutqError) as err:
        client.submit(two, processor="noop", timeout=5.0)
    assert err.value.code == "too_large" and "limit" in str(err.value)
    assert time.monotonic() - started < 3.0
    with pytest.raises(CutqError) as err:  # one frame over the cap, under the hard ceiling
        client.submit([("c.png", os.urandom(1_500_000))], processor="noop", timeout=5.0)
    assert err.value.code == "too_large"
    assert client.stats()["queued"] == 0 and client.list_jobs()["total"] == 0
    assert client.submit([("d.png", os.urandom(500_000))], processor="noop")  # under the cap: fine


# ---------------------------------------------------------------- 6. throttled warnings


def _failed_auth(sock: zmq.Socket) -> zmq.Socket:
    return sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)


def test_a_flood_of_bad_handshakes_and_refused_requests_writes_a_bounded_log(cluster: Cluster, secure: Keys):
    server = secure.creds("alice").server
    ctx = zmq.Context()
    socks, monitors = [], []
    try:
        for _ in range(300):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
            s.curve_serverkey = server
            monitors.append(_failed_auth(s))
            s.connect(cluster.endpoint)
            socks.append(s)
        # barrier: every one of them was told its handshake failed
        pending = set(range(len(monitors)))

        def all_refused() -> bool:
            for i in list(pending):
                if monitors[i].poll(0):
                    pending.discard(i)
            return not pending

        wait_for(all_refused, 60, what="300 refused handshakes")
        # a valid worker key making client requests: refused each time, logged a few times
        with Client(cluster.endpoint, timeout=5.0, credentials=secure.creds("w1")) as w:
            for _ in range(300):
                with pytest.raises(CutqError):
                    w.stats()
    finally:
        for s in socks:
            s.disable_monitor()
            s.close(0)
        for m in monitors:
            m.close(0)
        ctx.term()
    lines = (cluster.tmp / "broker.log").read_text().splitlines()
    handshakes = [ln for ln in lines if "handshake" in ln and "WARNING" in ln]
    refused = [ln for ln in lines if "refused Stats" in ln]
    assert 1 <= len(handshakes) <= 25, len(handshakes)
    assert 1 <= len(refused) <= 25, len(refused)


# ---------------------------------------------------------------- 8. a full disk, then space again


@pytest.fixture
def small_disk(tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (this test needs root): {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.timeout(180)
def test_disk_full_with_workers_attached_nothing_stuck_once_space_is_freed(cluster: Cluster, small_disk: Path):
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (14 << 20))  # freed later, so the queue gets room back
    cluster.data = small_disk / "data"
    cluster.start_broker()
    for _ in range(2):
        cluster.start_worker(2, "--preload", "")
    cluster.wait_workers(2)
    client = cluster.client(timeout=10.0)
    acknowledged: list[str] = []
    refusal = None
    for i in range(400):
        try:
            acknowledged.append(client.submit(_noop(1, f"j{i}", 200_000), processor="noop"))
        except CutqError as e:
            refusal = e
            break
    assert refusal is not None and refusal.code == "storage", "the disk never filled"
    # reads are answered while writes fail, and heartbeats keep the workers
    assert client.stats()["jobs"] == len(acknowledged)
    assert client.list_jobs(limit=5)["total"] == len(acknowledged)
    assert len([w for w in client.workers() if w["state"] == "alive"]) == 2
    broker_pid = cluster.broker.pid
    ballast.unlink()

    def all_final() -> bool:
        s = client.stats()
        return s["queued"] == 0 and s["running"] == 0 and s["done"] == len(acknowledged)

    wait_for(all_final, 60, what="every acknowledged task to finish after space was freed")
    assert cluster.broker.poll() is None and cluster.broker.pid == broker_pid  # no restart
    log = (cluster.tmp / "broker.log").read_text()
    assert log.count("storage error") <= 100, log.count("storage error")


# ---------------------------------------------------------------- 9. a re-queued task keeps its place


def test_a_task_requeued_after_a_worker_death_keeps_its_place(cluster: Cluster):
    cluster.start_broker()
    victim = cluster.start_worker(1, "--preload", "", name="victim")
    cluster.wait_workers(1)
    client = cluster.client()
    first = client.submit(_noop(1, "first"), processor="sleep", options={"seconds": 3})
    first_task = wait_for(lambda: (t := client.status(first)["tasks"][0])["state"] == "running" and t, 20)
    later = client.submit(_noop(10, "later"), processor="sleep", options={"seconds": 0.01})
    Cluster.kill9(victim)
    wait_for(lambda: client.status(first)["tasks"][0]["state"] == "queued", 10, what="the re-queue")
    cluster.start_worker(1, "--preload", "", name="next")
    assert client.wait(first, timeout=60)["state"] == "done"
    assert client.wait(later, timeout=60)["state"] == "done"
    history = client.status(first)["tasks"][0]["history"]
    assert [h["outcome"] for h in history] == ["lost", "done"], history
    rerun_started = history[1]["started"]
    later_started = [t["started"] for t in client.status(later)["tasks"]]
    assert all(rerun_started < s for s in later_started), (rerun_started, sorted(later_started))
    assert first_task["task_id"] < min(t["task_id"] for t in client.status(later)["tasks"])
