"""What the dashboard's feed reads from: the `Source` interface (the subset of
`shared.client.Client` the feed calls), `BrokerSource` (the client library plus the few
requests only the dashboard makes), and the helpers it shares with the in-memory source
(`tui.memory`): retrying a job's failed tasks, and the tasks one worker runs now.
"""

from __future__ import annotations

from typing import Any, Protocol

from shared import protocol as p
from shared.client import BrokerUnavailable, Client, CutqError
from shared.states import TaskState


class Source(Protocol):
    """What the feed needs from a connection: the subset of `shared.client.Client` it calls."""

    def stats(self) -> dict[str, Any]: ...
    def probe(self, timeout: float) -> None: ...
    def workers(self) -> list[dict[str, Any]]: ...
    def list_jobs(self, state: str | None = None, *, search: str | None = None, limit: int = 50,
                  offset: int = 0, sort: str = "created", descending: bool = True) -> dict[str, Any]: ...
    def status(self, job_id: str, *, tasks: bool = True) -> dict[str, Any]: ...
    def subscribe(self, job_id: str | None = None, ttl: float = 10.0) -> None: ...
    def next_events(self, timeout: float) -> list[dict]: ...
    def close(self) -> None: ...


class BrokerSource(Client):
    """The client library plus the few requests the dashboard makes that it has no call for
    (sorted job lists, a probe with its own short wait, a job's running tasks)."""

    def list_jobs(self, state: str | None = None, *, search: str | None = None, limit: int = 50,
                  offset: int = 0, sort: str = "created", descending: bool = True) -> dict[str, Any]:
        return self._request(p.ListJobs(req=0, state=state, search=search, limit=limit, offset=offset, sort=sort,
                                        descending=descending)).data

    def probe(self, timeout: float) -> None:
        """Raises BrokerUnavailable unless the broker answers within `timeout` seconds."""
        self._request(p.Stats(req=0), timeout=timeout)

    def running_tasks(self, job_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The job's running tasks (with their file names and workers)."""
        data = self._request(p.Status(req=0, job_id=job_id, task_state=TaskState.RUNNING,
                                            task_limit=limit)).data
        return list(data.get("tasks") or [])

    def worker_tasks(self, worker_id: str, job_ids: list[str]) -> list[dict[str, Any]]:
        """The tasks `worker_id` runs now, with job and file names: from the jobs named (those the
        event stream said), else from every job with running tasks."""
        return worker_tasks(self, worker_id, job_ids)

    def task_ids(self, job_id: str, state: str) -> list[int]:
        data = self._request(p.Status(req=0, job_id=job_id, task_state=state)).data
        return [int(t["task_id"]) for t in data.get("tasks") or []]

    def retry_failed(self, job_id: str) -> dict[str, Any]:
        """Re-queue every failed task of a job (not the cancelled ones: Retry without ids takes both)."""
        return retry_failed(self, job_id)


def retry_failed(source: Any, job_id: str, chunk: int = 5000) -> dict[str, Any]:
    """See BrokerSource.retry_failed; shared with the in-memory source."""
    ids = source.task_ids(job_id, TaskState.FAILED)
    requeued = 0
    for i in range(0, len(ids), chunk):
        requeued += int(source.retry(job_id, ids[i:i + chunk]).get("requeued") or 0)
    return {"requeued": requeued}


def worker_tasks(source: Any, worker_id: str, job_ids: list[str]) -> list[dict[str, Any]]:
    """See BrokerSource.worker_tasks; shared with the in-memory source."""
    jobs = list(dict.fromkeys(job_ids))
    if not jobs:
        page = source.list_jobs(TaskState.RUNNING, limit=200)
        jobs = [j["job_id"] for j in page.get("jobs") or [] if j.get("running")]
    out: list[dict[str, Any]] = []
    for job_id in jobs:
        try:
            tasks = source.running_tasks(job_id)
        except BrokerUnavailable:
            raise
        except CutqError:  # the job went meanwhile
            continue
        out += [t for t in tasks if str(t.get("worker")) == worker_id]
    return out
