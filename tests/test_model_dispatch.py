"""Model-aware dispatch: a rembg task goes only to a worker that can serve its model (weights in
its model dir, or loaded), preferring one that has it loaded; a task no live worker serves waits
in the queue, in its place, and status, stats and the submit reply say so.

Three levels: the scheduler alone (pure), the broker in process (fake clock, scripted workers),
and real broker and worker processes (a worker's model dir is its U2NET_HOME).
"""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path

import pytest

from broker.scheduler import Scheduler, TenantPolicy
from shared import protocol as p
from shared.client import CutqWarning
from shared.pipeline import PipelinedSubmitter
from tests.cluster import Cluster, wait_for
from tests.inprocess import FakeWorker, InprocBroker, submit_msg

# ---------------------------------------------------------------- the scheduler alone


def _fill(s: Scheduler, tenant: str, n: int, start: int, model: str | None = None, priority: int = 0) -> list[int]:
    ids = list(range(start, start + n))
    for tid in ids:
        s.push(tid, tenant, priority, model=model)
    return ids


def test_pop_takes_only_what_the_worker_serves_and_the_rest_waits_in_place():
    s = Scheduler()
    _fill(s, "A", 3, 0, model="u2net")
    noop = _fill(s, "A", 2, 10)
    assert [tid for tid, _ in s.pop(10, models=frozenset({"u2netp"}))] == noop  # none of u2net's
    assert not s.ready(frozenset({"u2netp"})) and s.ready() and s.ready(frozenset({"u2net"}))
    assert s.queued_models() == {"u2net": 3} and s.needs_models()
    assert [tid for tid, _ in s.pop(10, models=frozenset({"u2net"}))] == [0, 1, 2]
    assert len(s) == 0 and not s.needs_models()


def test_within_a_tenant_priority_then_age_across_models():
    s = Scheduler()
    s.push(1, "A", 0, model="x")
    s.push(2, "A", 5, model="y")
    s.push(3, "A", 0)
    s.push(4, "A", 5, model="x")
    s.push(5, "A", 0, model="y")
    assert [tid for tid, _ in s.pop(10)] == [2, 4, 1, 3, 5]
    assert s.ahead("A", 5, 0) == 0


def test_position_counts_every_model_of_the_tenant():
    s = Scheduler()
    _fill(s, "A", 5, 0, model="x")
    _fill(s, "A", 5, 5, model="y")
    assert s.ahead("A", 7, 0) == 5 + 2
    s.remove("A", 0, [0, 1, 5])
    assert s.ahead("A", 7, 0) == 3 + 1 and len(s) == 7


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_tenants_share_fairly_among_the_tasks_a_worker_can_take(batch):
    """B also has tasks of a model this worker lacks: they neither count for nor against B."""
    s = Scheduler({"A": TenantPolicy(weight=1), "B": TenantPolicy(weight=2)})
    _fill(s, "A", 2000, 0, model="u2net")
    _fill(s, "B", 2000, 10_000, model="u2net")
    _fill(s, "B", 2000, 20_000, model="isnet")
    got: Counter[str] = Counter()
    while sum(got.values()) < 900:
        for tid, tenant in s.pop(batch, models=frozenset({"u2net"})):
            assert tid < 20_000
            got[tenant] += 1
    assert got["B"] / got["A"] == pytest.approx(2.0, rel=0.1), got
    assert s.queued_models("B")["isnet"] == 2000


def test_delayed_and_restored_tasks_keep_their_model():
    s = Scheduler()
    s.push(1, "A", 0, not_before=10.0, now=0.0, model="u2net")
    assert s.release_due(10.0) == 1 and s.queued_models() == {"u2net": 1}

    class Run:
        tenant, priority, first, count, model = "A", 0, 100, 3, "isnet"

        def tasks(self) -> list[tuple[int, float]]:
            return []

    s.load([Run()], now=0.0)
    assert s.queued_models() == {"u2net": 1, "isnet": 3}
    assert s.pop(10, models=frozenset()) == []


# ---------------------------------------------------------------- the broker in process


@pytest.fixture
def h(tmp_path: Path):
    harness = InprocBroker(tmp_path)
    yield harness
    harness.close()


def _worker(h: InprocBroker, name: str, slots: int, served: tuple[str, ...] = (),
            loaded: tuple[str, ...] = ()) -> FakeWorker:
    w = FakeWorker(h.ctx, h.endpoint, name, slots)
    h.peers.append(w)
    w.send(p.Ready(name=name, host="inproc", pid=os.getpid(), slots=slots, models=list(loaded),
                   processors=["rembg", "noop", "sleep"], model_files={m: f"sha-{m}" for m in served}))
    h.turn()
    return w


def _rembg(n: int, model: str, tag: str = "r") -> p.Submit:
    msg = submit_msg(n, tag)
    msg.processor, msg.options = "rembg", {"model": model}
    return msg


def test_a_task_goes_only_to_a_worker_that_serves_its_model(h: InprocBroker):
    a = _worker(h, "a", 4, served=("u2netp",))
    b = _worker(h, "b", 1, served=("u2net",))
    client = h.client()
    r = h.ask(client, _rembg(2, "u2net"))
    assert r.ok and "warning" not in r.data
    h.submit(client, 2, "n")  # noop: anyone
    to_b = b.expect_tasks()
    assert [t["options"]["model"] for t in to_b] == ["u2net"]
    assert [t["processor"] for t in a.expect_tasks()] == ["noop", "noop"]
    assert a.quiet(p.Dispatch)
    b.results(*to_b)
    h.turn()
    assert [t["task_id"] for t in b.expect_tasks()] == [r.data["tasks"][1]]


def test_a_worker_with_the_model_loaded_goes_first_then_any_that_serves_it(h: InprocBroker):
    a = _worker(h, "a", 4, served=("u2net",))  # more free slots: asked first without a preference
    b = _worker(h, "b", 2, served=("u2net",), loaded=("u2net",))
    client = h.client()
    r = h.ask(client, _rembg(3, "u2net"))
    assert [t["task_id"] for t in b.expect_tasks()] == r.data["tasks"][:2]
    assert [t["task_id"] for t in a.expect_tasks()] == r.data["tasks"][2:]


def test_a_task_no_worker_serves_waits_is_reported_then_runs_when_one_joins(h: InprocBroker):
    a = _worker(h, "a", 2)  # noop only: no model in its dir
    client = h.client()
    r = h.ask(client, _rembg(1, "u2net"))
    assert r.ok and r.data["warning"].startswith("no live worker serves model u2net")
    job = r.data["job_id"]
    h.elapse(5.0, heartbeats=[a])
    assert a.quiet(p.Dispatch)
    status = h.ask(client, p.Status(req=0, job_id=job, tasks=True)).data
    assert status["state"] == "queued" and status["waiting"] == "waiting for a worker with model u2net"
    assert status["tasks"][0]["attempts"] == 0
    stats = h.ask(client, p.Stats(req=0)).data
    assert stats["waiting_models"] == {"u2net": 1}
    assert stats["waiting"] == "1 tasks waiting for a worker with model u2net"
    b = _worker(h, "b", 1, served=("u2net",))
    task = b.expect_tasks()
    assert [t["task_id"] for t in task] == r.data["tasks"]
    b.results(*task)
    h.turn()
    status = h.ask(client, p.Status(req=0, job_id=job, tasks=False)).data
    assert status["state"] == "done" and status["waiting"] is None
    assert h.ask(client, p.Stats(req=0)).data["waiting_models"] == {}


def test_weights_a_worker_says_it_has_now_make_it_serve_the_model(h: InprocBroker):
    a = _worker(h, "a", 2)
    client = h.client()
    r = h.ask(client, _rembg(1, "u2net"))
    assert a.quiet(p.Dispatch)
    a.send(p.Heartbeat(models=[], model_files={"u2net": "sha-new"}))  # copied into its model dir
    h.turn()
    assert [t["task_id"] for t in a.expect_tasks()] == r.data["tasks"]
    workers = h.ask(client, p.Workers(req=0)).data["workers"]
    assert workers[0]["servable"] == ["u2net"] and workers[0]["models"] == ["u2net"]


def test_the_model_a_task_needs_survives_a_broker_restart(tmp_path: Path):
    first = InprocBroker(tmp_path)
    client = first.client()
    assert first.ask(client, _rembg(3, "isnet-anime")).ok
    first.close()
    again = InprocBroker(tmp_path)
    try:
        assert again.broker.core.scheduler.queued_models() == {"isnet-anime": 3}
        w = _worker(again, "u", 8, served=("u2netp",))
        assert w.quiet(p.Dispatch)
        v = _worker(again, "v", 8, served=("isnet-anime",))
        assert len(v.expect_tasks()) == 3
    finally:
        again.close()


# ---------------------------------------------------------------- real broker and workers


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (48, 32), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def _without_models(cluster: Cluster, tmp: Path) -> dict[str, str]:
    empty = tmp / "no-models"
    empty.mkdir(exist_ok=True)
    return {**cluster.env, "U2NET_HOME": str(empty)}


@pytest.mark.timeout(120)
def test_real_a_task_of_a_model_only_worker_b_has_goes_to_b(cluster: Cluster, tmp_path: Path, needs_model: None):
    cluster.start_broker()
    cluster.start_worker(4, "--preload", "", name="A", env=_without_models(cluster, tmp_path))
    cluster.start_worker(1, "--preload", "", name="B")
    workers = {w["name"]: w for w in cluster.wait_workers(2)}
    assert workers["A"]["servable"] == [] and "u2netp" in workers["B"]["servable"]
    client = cluster.client()
    job = client.submit([(f"{i}.png", _png()) for i in range(3)], options={"model": "u2netp"}, no_cache=True)
    wait_for(lambda: client.status(job, tasks=False)["state"] == "done", 90, what="the job done")
    tasks = client.status(job)["tasks"]
    assert {t["worker"] for t in tasks} == {workers["B"]["id"]}, tasks
    assert all(t["attempts"] == 1 for t in tasks)


@pytest.mark.timeout(120)
def test_real_a_task_nobody_serves_waits_says_so_then_runs_when_a_worker_with_it_joins(
        cluster: Cluster, tmp_path: Path, needs_model: None):
    cluster.start_broker()
    cluster.start_worker(2, "--preload", "", name="A", env=_without_models(cluster, tmp_path))
    cluster.wait_workers(1)
    client = cluster.client()
    with pytest.warns(CutqWarning, match="no live worker serves model u2netp"):
        with PipelinedSubmitter(cluster.endpoint, window=4) as s:
            fut = s.submit([("photo.png", _png())], options={"model": "u2netp"})
            job = fut.result(30)
    assert "no live worker serves model u2netp" in fut.data["warning"]
    wait_for(lambda: client.stats()["waiting_models"] == {"u2netp": 1}, 10, what="stats to say it waits")
    status = client.status(job)
    assert status["state"] == "queued" and status["waiting"] == "waiting for a worker with model u2netp"
    assert status["tasks"][0]["attempts"] == 0  # never dispatched, so never retried into a download
    cluster.start_worker(1, "--preload", "", name="B")
    wait_for(lambda: client.status(job, tasks=False)["state"] == "done", 90, what="the job done on B")
    assert client.status(job)["tasks"][0]["attempts"] == 1
    assert client.stats()["waiting_models"] == {}


@pytest.mark.timeout(120)
def test_real_weights_copied_into_a_workers_model_dir_are_served_without_a_restart(
        cluster: Cluster, tmp_path: Path, needs_model: None):
    cluster.start_broker()
    env = _without_models(cluster, tmp_path)
    cluster.start_worker(1, "--preload", "", name="A", env=env)
    cluster.wait_workers(1)
    client = cluster.client()
    with pytest.warns(CutqWarning, match="no live worker serves model u2netp"):
        job = client.submit([("photo.png", _png())], options={"model": "u2netp"})
    assert client.status(job)["waiting"] == "waiting for a worker with model u2netp"
    weights = Path(os.environ.get("U2NET_HOME") or Path.home() / ".u2net") / "u2netp.onnx"
    partial = Path(env["U2NET_HOME"]) / "u2netp.onnx.part"
    partial.write_bytes(weights.read_bytes())
    partial.rename(Path(env["U2NET_HOME"]) / "u2netp.onnx")  # the way to add weights: whole, by a rename
    wait_for(lambda: client.status(job, tasks=False)["state"] == "done", 90, what="the job done on A")
    assert client.workers()[0]["servable"] == ["u2netp"]
