"""The broker core in process: a real Broker on inproc, driven turn by turn with a fake clock.

Beside the real-process tests (tests/cluster.py), never instead of them: these pin the
loop's rules (acknowledge after commit, dispatch by free slots, liveness, re-queue order,
results and goodbyes, cancel, size cap, malformed frames) quickly and deterministically.
Harness: tests/inprocess.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from broker.server import Broker, BrokerSetupError
from broker.store import StoreError
from shared import protocol as p
from shared.config import BrokerConfig
from tests.inprocess import InprocBroker, submit_msg

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def h(tmp_path: Path):
    harness = InprocBroker(tmp_path)
    yield harness
    harness.close()


@pytest.fixture
def small(tmp_path: Path):
    harness = InprocBroker(tmp_path, max_message_bytes=64 * 1024)
    yield harness
    harness.close()


# ---------------------------------------------------------------- setup


def test_a_local_bind_needs_no_curve_and_a_public_one_is_refused_without_keys(h: InprocBroker, tmp_path: Path):
    assert h.broker.secure is False
    assert h.broker.endpoint == h.endpoint
    with pytest.raises(BrokerSetupError, match="without CURVE"):
        Broker(BrokerConfig(bind="tcp://0.0.0.0:0", data_dir=tmp_path / "other"), context=h.ctx)


# ---------------------------------------------------------------- submit


def test_submit_is_acknowledged_only_once_committed_and_lands_in_the_queue(h: InprocBroker,
                                                                           monkeypatch: pytest.MonkeyPatch):
    client = h.client()
    visible_when_acknowledged: list[int] = []
    send = h.broker._send

    def spy(ident: bytes, frames: list[bytes]) -> bool:
        msg = p.decode(frames)
        if isinstance(msg, p.Reply) and msg.ok and "job_id" in msg.data:
            # another connection sees only committed rows
            visible_when_acknowledged.append(
                len(h.committed("SELECT id FROM tasks WHERE job_id = ?", (msg.data["job_id"],))))
        return send(ident, frames)

    monkeypatch.setattr(h.broker, "_send", spy)
    job_id, tasks = h.submit(client, 3)
    assert visible_when_acknowledged == [3]
    assert [h.task(t)["state"] for t in tasks] == ["queued"] * 3
    status = h.ask(client, p.Status(req=0, job_id=job_id, tasks=True))
    assert status.ok and status.data["queued"] == 3 and status.data["state"] == "queued"
    assert h.broker.core.store.depth == 3 and len(h.broker.core.scheduler) == 3


def test_a_submit_whose_commit_fails_is_refused_and_nothing_of_its_turn_is_sent(h: InprocBroker,
                                                                               monkeypatch: pytest.MonkeyPatch):
    client, store = h.client(), h.broker.core.store
    w = h.worker("wA", slots=2)
    commit = store.commit

    def disk_full() -> list:
        if not store._in_tx:  # the turn that only started the blob write: nothing to commit yet
            return commit()
        monkeypatch.setattr(store, "commit", commit)  # only the turn with the job's rows fails
        raise StoreError("database or disk is full (simulated)")

    monkeypatch.setattr(store, "commit", disk_full)
    r = h.ask(client, submit_msg(2, "lost"))  # submitted and dispatched in the same turn...
    assert not r.ok and r.code == "storage", r
    assert w.quiet(p.Dispatch)  # ...and neither acknowledged nor sent
    assert h.committed("SELECT COUNT(*) FROM tasks") == [(0,)]
    h.elapse(1.0, heartbeats=[w])  # past the write back-off
    assert w.quiet(p.Dispatch)
    _, tasks = h.submit(client, 2, "kept")  # memory was rebuilt: both slots are free
    assert sorted(t["task_id"] for t in w.expect_tasks()) == tasks


# ---------------------------------------------------------------- dispatch


def test_dispatch_goes_to_the_most_free_slots_and_never_beyond_a_workers_slots(h: InprocBroker):
    client = h.client()
    a, b = h.worker("wA", slots=1), h.worker("wB", slots=3)
    _, (t1,) = h.submit(client, 1, "one")
    assert [t["task_id"] for t in b.expect_tasks()] == [t1]  # b: 3 free, a: 1
    assert a.quiet(p.Dispatch)
    _, (t2,) = h.submit(client, 1, "two")
    assert [t["task_id"] for t in b.expect_tasks()] == [t2]  # b: 2 free, a: 1

    _, many = h.submit(client, 10, "many")
    got_b, got_a = b.expect_tasks(), a.expect_tasks()
    assert len(got_b) == 1 and len(got_a) == 1  # b had 1 slot left, a 1
    h.elapse(5.0, heartbeats=[a, b])
    assert b.quiet(p.Dispatch) and a.quiet(p.Dispatch)  # full: nothing more, however long
    assert h.committed("SELECT worker, COUNT(*) FROM tasks WHERE state = 'running' GROUP BY worker") == [
        ("wA", 1), ("wB", 3)]

    b.results(got_b[0])
    h.turn()
    more = b.expect_tasks()
    assert len(more) == 1 and a.quiet(p.Dispatch)  # one slot freed, one task
    assert h.task(got_b[0]["task_id"])["state"] == "done"
    assert sorted(t["task_id"] for t in got_a + got_b + more) == many[:3]  # submission order


# ---------------------------------------------------------------- liveness


def test_a_silent_worker_is_declared_dead_and_its_task_runs_elsewhere_once(h: InprocBroker):
    client = h.client()
    a = h.worker("wA", slots=1)
    _, (task,) = h.submit(client, 1)
    (first,) = a.expect_tasks()
    b = h.worker("wB", slots=1)

    h.elapse(3.0, heartbeats=[b])  # exactly interval * liveness: still alive
    assert h.task(task)["worker"] == "wA" and b.quiet(p.Dispatch)
    h.elapse(0.5, heartbeats=[b])
    (second,) = b.expect_tasks()
    assert second["task_id"] == task and second["attempt"] == 2
    row = h.task(task)
    assert row["state"] == "running" and row["worker"] == "wB" and row["worker_deaths"] == 1

    a.results(first, data=b"late, from the dead")
    h.turn()
    assert "unknown worker" in a.expect(p.Disconnect).reason
    b.results(second, data=b"from b")
    h.turn()
    a.results(first, data=b"later still")  # after the task is done, too
    h.turn()
    assert h.task(task)["state"] == "done" and h.task(task)["worker_deaths"] == 1
    assert h.attempts(task) == [(1, "wA", "lost"), (2, "wB", "done")]  # each attempt recorded once
    assert h.result_bytes(task) == b"from b"
    workers = {w["name"]: w["state"] for w in h.ask(client, p.Workers(req=0)).data["workers"]}
    assert workers == {"wA": "dead", "wB": "alive"}


def test_a_heartbeat_waiting_in_the_socket_keeps_its_worker_alive(h: InprocBroker):
    client = h.client()
    a = h.worker("wA", slots=1)
    _, (task,) = h.submit(client, 1)
    a.expect_tasks()
    h.advance(10.0)  # a slow turn: far past the liveness window...
    a.heartbeat()  # ...while the worker's heartbeat waited unread
    h.turn()
    assert h.broker.core.registry.get_alive(b"wA") is not None
    assert h.task(task)["state"] == "running" and h.task(task)["worker_deaths"] == 0
    assert a.quiet(p.Disconnect)


def test_silence_is_not_judged_while_messages_are_still_unread(h: InprocBroker, monkeypatch: pytest.MonkeyPatch):
    """A turn that stops at its message cap has not read the socket empty: a worker's heartbeat
    may wait behind the backlog, so no worker dies in that turn."""
    monkeypatch.setattr("broker.server.MAX_MESSAGES_PER_TURN", 5)
    noisy = h.client("noisy")
    a = h.worker("wA", slots=1)
    h.advance(3.5)
    for _ in range(12):
        noisy.request(p.Unsubscribe(req=0))
    h.turn()  # reads 5 of 12: not drained
    assert h.broker.core.registry.get_alive(b"wA") is not None
    a.heartbeat()
    h.turn(3)  # the rest, then the heartbeat
    assert h.broker.core.registry.get_alive(b"wA") is not None
    assert len(noisy.take(p.Reply)) == 12
    h.elapse(3.5)  # and silence still kills once the socket is read empty
    assert h.broker.core.registry.get_alive(b"wA") is None


# ---------------------------------------------------------------- re-queue order


def test_a_requeued_task_keeps_its_place_ahead_of_newer_tasks_of_its_tenant(h: InprocBroker):
    client = h.client()
    a = h.worker("wA", slots=1)
    _, (old,) = h.submit(client, 1, "old")
    a.expect_tasks()
    _, newer = h.submit(client, 3, "new")
    h.elapse(3.5)  # a dies: `old` back to the queue, behind it in time but not in order
    assert h.task(old)["state"] == "queued"
    b = h.worker("wB", slots=1)
    (t,) = b.expect_tasks()
    assert t["task_id"] == old and old < min(newer)
    b.results(t)
    h.turn()
    assert [t["task_id"] for t in b.expect_tasks()] == [newer[0]]


# ---------------------------------------------------------------- results and goodbye


def test_a_result_with_a_path_as_its_format_fails_the_attempt_and_is_retried(h: InprocBroker, tmp_path: Path):
    client = h.client()
    w = h.worker("wA", slots=1)
    _, (task,) = h.submit(client, 1)
    (first,) = w.expect_tasks()
    w.results(first, ext="../../x", data=b"escape")
    h.turn()
    row = h.task(task)
    assert row["state"] == "queued" and row["result_ext"] is None and row["failures"] == 1
    assert "unknown format" in row["error"]
    assert h.committed("SELECT COUNT(*) FROM tasks WHERE result_digest IS NOT NULL") == [(0,)]
    assert not list(tmp_path.rglob("x")) and not (tmp_path.parent / "x").exists()
    r = h.ask(client, p.Fetch(req=0, task_id=task, what="result"))
    assert not r.ok and r.code == "not_found"
    assert w.quiet(p.Dispatch)  # retry backoff: not at once
    h.elapse(2.0, heartbeats=[w])  # backoff 1 s, jittered to at most 1.5 s
    (second,) = w.expect_tasks()
    assert second["task_id"] == task and second["attempt"] == 2
    w.results(second, ext="png", data=b"fine")
    h.turn()
    assert h.task(task)["state"] == "done" and h.task(task)["result_ext"] == "png"


def test_goodbye_hands_tasks_back_unspent_without_a_worker_death(h: InprocBroker):
    client = h.client()
    a = h.worker("wA", slots=2)
    _, tasks = h.submit(client, 2)
    held = a.expect_tasks()
    assert len(held) == 2
    a.goodbye(held[0])  # the second was still on the wire: it goes back too
    h.turn()
    for t in tasks:
        row = h.task(t)
        assert (row["state"], row["attempts"], row["failures"], row["worker_deaths"]) == ("queued", 0, 0, 0), row
    assert h.attempts(tasks[0]) == [] and h.attempts(tasks[1]) == []
    assert h.broker.core.registry.workers[b"wA"].state == "left"
    b = h.worker("wB", slots=2)
    got = b.expect_tasks()
    assert sorted((t["task_id"], t["attempt"]) for t in got) == [(tasks[0], 1), (tasks[1], 1)]


# ---------------------------------------------------------------- cancel


def test_cancelling_a_running_task_tells_its_worker_and_drops_its_late_result(h: InprocBroker):
    client = h.client()
    w = h.worker("wA", slots=1)
    job_id, (t1, t2) = h.submit(client, 2)
    (running,) = w.expect_tasks()
    assert running["task_id"] == t1
    r = h.ask(client, p.Cancel(req=0, job_id=job_id))
    assert r.ok and r.data["cancelled"] == 2
    assert w.expect(p.CancelTasks).task_ids == [t1]
    assert w.quiet(p.Dispatch)  # t2 was cancelled while queued
    w.results(running)
    h.turn()
    assert h.task(t1)["state"] == "cancelled" and h.task(t2)["state"] == "cancelled"
    assert h.committed("SELECT COUNT(*) FROM tasks WHERE result_digest IS NOT NULL") == [(0,)]
    _, (t3,) = h.submit(client, 1, "next")  # the slot is free again
    assert [t["task_id"] for t in w.expect_tasks()] == [t3]


# ---------------------------------------------------------------- bad input


def test_a_message_over_the_size_cap_is_answered_too_large_and_stores_nothing(small: InprocBroker):
    client = small.client()
    msg = p.Submit(req=0, names=["big.png"], processor="noop")
    msg.blobs = [b"\0" * (80 * 1024)]
    r = small.ask(client, msg)
    assert not r.ok and r.code == "too_large" and r.req == msg.req, r
    assert small.committed("SELECT COUNT(*) FROM jobs") == [(0,)]
    assert small.committed("SELECT COUNT(*) FROM blobs") == [(0,)]
    assert not any((small.config.data_dir / "blobs").glob("??/??/*"))
    job_id, _ = small.submit(client, 1, "small")  # and the broker goes on
    assert small.committed("SELECT id FROM jobs") == [(job_id,)]


@pytest.mark.parametrize("frames", [
    [b"junk"],
    [b""],
    [b"CUTQ0", b"STATS", b"\x80"],
    [p.VERSION, b"NOPE", b"\x80"],
    [p.VERSION, b"SUBMIT", b"\xc1\xc1"],
    [p.VERSION, b"SUBMIT", b"\x81\xa3req\xa3one"],  # req of the wrong type
], ids=["one-frame", "empty", "version", "type", "garbage-body", "wrong-field-type"])
def test_a_malformed_message_gets_bad_request_and_the_broker_keeps_working(h: InprocBroker, frames: list[bytes]):
    client = h.client()
    w = h.worker("wA", slots=1)
    client.send_frames(frames)
    h.turn()
    r = client.expect(p.Reply)
    assert (r.ok, r.code, r.req) == (False, "bad_request", 0), r
    _, (task,) = h.submit(client, 1)
    (t,) = w.expect_tasks()
    w.results(t)
    h.turn()
    assert h.task(task)["state"] == "done"
    assert h.broker.core.warnings.counts["malformed"] == 1


# ---------------------------------------------------------------- footprint

_FOOTPRINT = textwrap.dedent("""
    import json, pathlib, sys, tempfile
    from broker.server import Broker
    from shared.config import BrokerConfig
    tmp = pathlib.Path(tempfile.mkdtemp(dir=sys.argv[1]))
    broker = Broker(BrokerConfig(bind=f"ipc://{tmp}/broker.sock", data_dir=tmp / "data"))
    broker.turn()
    status = pathlib.Path("/proc/self/status").read_text()
    rss_kb = int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1])
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"rembg", "onnxruntime", "textual", "scipy", "skimage"})
    broker.close()
    print(json.dumps({"rss_kb": rss_kb, "heavy": heavy}))
""")


def test_a_started_broker_imports_no_heavy_library_and_stays_under_60_mb(tmp_path: Path):
    """In a fresh interpreter, so other tests' imports do not count (issue 9's done-when)."""
    proc = subprocess.run([sys.executable, "-c", _FOOTPRINT, str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO, timeout=30, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"broker RSS after start and one turn: {found['rss_kb'] / 1024:.1f} MiB")
    assert found["heavy"] == []
    assert found["rss_kb"] < 60 * 1024, found

