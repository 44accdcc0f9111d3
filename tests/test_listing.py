"""Short job ids, server-side sorting of every job, and server-side paging of a job's tasks,
on a real broker (requests built from the protocol where the client library has no flag yet)."""

from __future__ import annotations

import pytest

from shared import protocol as p
from shared.client import CutqError
from tests.cluster import Cluster, wait_for


def _files(n: int, tag: str) -> list[tuple[str, bytes]]:
    return [(f"{tag}-{i:05d}.png", b"\x89PNG\r\n\x1a\n" + f"{tag}{i}".encode()) for i in range(n)]


def test_a_unique_prefix_names_a_job_and_an_ambiguous_one_lists_candidates(cluster: Cluster):
    cluster.start_broker()
    client = cluster.client()
    jobs = [client.submit(_files(1, f"j{i}"), processor="noop") for i in range(40)]
    job = jobs[0]
    assert client.status(job[:6])["job_id"] == job
    # with 40 random ids, some first hex digit is shared: that one-letter prefix is ambiguous
    shared = next(c for c in "0123456789abcdef" if sum(j.startswith(c) for j in jobs) > 1)
    with pytest.raises(CutqError) as err:
        client.status(shared)
    assert err.value.code == "ambiguous" and all(j in str(err.value) for j in jobs if j.startswith(shared))
    with pytest.raises(CutqError) as err:
        client.status("zzzz")
    assert err.value.code == "not_found"
    r = cluster.cli("status", job[:8], "--json")
    assert r.returncode == 0, r.stderr
    assert client.cancel(job[:7])["cancelled"] == 1  # a prefix reaches cancel too (no worker: still queued)


def test_the_job_list_sorts_every_job_not_one_page(cluster: Cluster):
    cluster.start_broker()
    client = cluster.client()
    big = client.submit(_files(30, "big"), processor="noop")
    small = [client.submit(_files(1, f"s{i}"), processor="noop") for i in range(12)]
    client.cancel(small[3])
    by_tenant = client.submit(_files(2, "t"), processor="noop", tenant="aaa")

    def page(sort: str, descending: bool, limit: int = 5) -> list[dict]:
        return client._request(p.ListJobs(req=0, sort=sort, descending=descending, limit=limit)).data["jobs"]

    assert [j["job_id"] for j in page("created", False, 1)] == [big]  # the oldest of all, on page one
    assert page("state", True, 1)[0]["job_id"] == small[3]  # cancelled sorts last ascending, first descending
    assert page("tenant", False, 1)[0]["job_id"] == by_tenant
    with pytest.raises(CutqError) as err:
        page("colour", True)
    assert err.value.code == "bad_request"
    r = client._request(p.ListJobs(req=0, sort="created", descending=True, limit=5, offset=5)).data
    assert r["total"] == 14 and len(r["jobs"]) == 5


def test_a_big_jobs_tasks_are_paged_on_the_server(cluster: Cluster):
    cluster.start_broker()
    client = cluster.client()
    job = client.submit(_files(2500, "many"), processor="noop")
    reply = client._request(p.Status(req=0, job_id=job, task_limit=100, task_offset=2400)).data
    names = [t["name"] for t in reply["tasks"]]
    assert names == [f"many-{i:05d}.png" for i in range(2400, 2500)]
    assert reply["total"] == 2500
    client.cancel(job, task_ids=[t["task_id"] for t in reply["tasks"][:3]])
    cancelled = client._request(p.Status(req=0, job_id=job, task_state="cancelled")).data["tasks"]
    assert [t["name"] for t in cancelled] == names[:3]
    wait_for(lambda: client.status(job, tasks=False)["cancelled"] == 3, 5)


def test_an_admin_drains_a_worker_and_resumes_it(cluster: Cluster):
    cluster.start_broker()
    cluster.start_worker(1, "--preload", "", name="keeper")
    cluster.wait_workers(1)
    client = cluster.client()
    r = cluster.cli("drain", "keeper", "--json")
    assert r.returncode == 0, r.stderr
    assert '"draining": true' in r.stdout
    job = client.submit(_files(3, "held"), processor="noop")
    # barrier: a later stats tick shows the worker draining and the job still fully queued
    wait_for(lambda: [w["state"] for w in client.workers()] == ["draining"], 10)
    assert client.status(job, tasks=False)["queued"] == 3
    assert cluster.cli("drain", "keeper", "--resume").returncode == 0
    assert client.wait(job, timeout=20)["state"] == "done"
    assert cluster.cli("drain", "nobody").returncode != 0
