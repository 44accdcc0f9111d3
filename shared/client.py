"""The cutq client library: the one way the CLI and the TUI talk to a broker.

Synchronous and single-threaded: one DEALER socket per Client, requests matched to
replies by `req` id, pushed events buffered in between.  Use one Client per thread.
A job bigger than one part (8 MiB) is streamed: `UploadStart`, parts of about the
broker's part size with a few in flight, then one `Submit` naming the upload, so
neither side ever holds the whole job in memory (shared/uploads.py); `fetch` writes results
into a folder through shared/results.py; the errors (and `CutqWarning`) are in shared/errors.py,
importable from here too.  Never imports textual.

Until the broker has answered once, a request waits at most `connect_timeout` (3 s)
for the connection itself, so a broker that is not there is reported within seconds
whatever the request's own timeout; once it has answered, waits are the request's.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import zmq

from shared import protocol as p
from shared.config import default_endpoint, endpoint_problem
from shared.errors import BrokerUnavailable, CutqError, CutqWarning, warn_of
from shared.results import fetch_job, result_filename
from shared.security import Credentials
from shared.states import TERMINAL
from shared.uploads import IMAGE_SUFFIXES, JobSpec, Progress, collect_images, read_lazily, submit_job, total_size

# the public API, with the names the dashboard (tui/) imports from here though they live elsewhere
__all__ = [
    "CONNECT_TIMEOUT", "IMAGE_SUFFIXES", "JOB_SORTS", "MAX_MESSAGE_BYTES", "BrokerUnavailable", "Client",
    "CutqError", "CutqWarning", "Progress", "collect_images", "result_filename",
]

MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # the broker's default --max-message-mb
CONNECT_TIMEOUT = 3.0  # first contact: seconds to wait for the connection before saying there is no broker
JOB_SORTS: tuple[str, ...] = ("created", "state", "progress", "errors", "tenant")  # what ListJobs sorts by


class Client:
    """A connection to one broker.  `timeout` bounds each request's wait for a reply."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        timeout: float = 15.0,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        credentials: Credentials | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        """`credentials` default to $CUTQ_KEY/$CUTQ_SERVER_KEY when set (CURVE), else none.
        `max_message_bytes`: the broker's cap on one message; a bigger image is refused here.
        `connect_timeout`: until the broker first answers, the longest wait for a connection.
        A malformed endpoint raises CutqError (code bad_endpoint) here, before any socket."""
        self.endpoint = endpoint or default_endpoint()
        problem = endpoint_problem(self.endpoint)
        if problem:
            raise CutqError(f"bad broker endpoint {self.endpoint!r}: {problem}", code="bad_endpoint")
        self.credentials = credentials if credentials is not None else Credentials.from_env(os.environ)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.answered = False  # has the broker ever answered this client? (then waits are the requests' own)
        self.max_message_bytes = max_message_bytes
        self._own_context = context is None
        self._ctx: zmq.Context[zmq.Socket[bytes]] = context or zmq.Context()
        self._ids = itertools.count(1)
        self._events: deque[dict[str, Any]] = deque()
        self._sock: zmq.Socket[bytes] | None = None
        self._subscription: tuple[str | None, float] | None = None
        self._connect()

    # ------------------------------------------------------------------ plumbing

    def _connect(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # don't queue requests for a broker that isn't there
        try:
            if self.credentials is not None:
                self.credentials.apply(sock)
            sock.connect(self.endpoint)
        except zmq.ZMQError as e:
            sock.close(linger=0)
            if self._own_context:
                self._ctx.term()
            raise CutqError(f"bad broker endpoint {self.endpoint!r}: {e.strerror}", code="bad_endpoint") from None
        self._sock = sock

    def _reconnect(self) -> None:
        # Lazy Pirate: after a timeout the socket may hold a stale reply; start clean.
        if self._sock is not None:
            self._sock.close(linger=0)
        self._connect()

    def close(self) -> None:
        """Close the socket (and the context, if this client made it)."""
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._own_context:
            self._ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _receive(self, timeout: float) -> p.Message | None:
        assert self._sock is not None
        if not self._sock.poll(max(0, int(timeout * 1000))):
            return None
        frames = self._sock.recv_multipart(copy=True)
        self.answered = True
        try:
            return p.decode(frames)
        except p.ProtocolError:
            return None  # a garbled frame from the broker is dropped, not fatal

    def _send(self, msg: p.Message, timeout: float) -> int:
        """Give `msg` a fresh req id and send it; BrokerUnavailable if not connected in time:
        within `timeout` and the client's timeout, and `connect_timeout` until the broker
        has answered once (so no broker is reported in seconds, whatever the request)."""
        assert self._sock is not None
        req = next(self._ids)
        msg.req = req  # type: ignore[attr-defined]
        wait = min(timeout, self.timeout) if self.answered else min(timeout, self.timeout, self.connect_timeout)
        # IMMEDIATE: the socket takes a message only once connected; wait for that, bounded
        if not self._sock.poll(max(0, int(wait * 1000)), zmq.POLLOUT):
            self._reconnect()
            raise BrokerUnavailable(f"cannot connect to broker at {self.endpoint} within {wait:g}s")
        self._sock.send_multipart(p.encode(msg), copy=False)
        return req

    def _await(self, reqs: Collection[int], timeout: float, waited: float | None = None) -> p.Reply:
        """The next reply to one of `reqs` (events are buffered, other replies dropped).

        An error reply raises CutqError; none within `timeout` reconnects and raises
        BrokerUnavailable (saying `waited` seconds, default `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            reply = self._receive(left) if left > 0 else None
            if reply is None:
                self._reconnect()
                raise BrokerUnavailable(f"no reply from broker at {self.endpoint} within "
                                        f"{timeout if waited is None else waited:g}s")
            if isinstance(reply, p.Events):
                self._events.extend(reply.events)
            elif isinstance(reply, p.Reply) and reply.req in reqs:
                if not reply.ok:
                    raise CutqError(reply.error, code=reply.code or "error")
                return reply

    def _request(self, msg: p.Message, timeout: float | None = None) -> p.Reply:
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        req = self._send(msg, timeout)
        return self._await((req,), max(0.0, deadline - time.monotonic()), waited=timeout)

    # ------------------------------------------------------------------ requests

    def submit_reply(
        self,
        files: Iterable[tuple[str, bytes]],
        *,
        processor: str = "rembg",
        options: dict[str, Any] | None = None,
        priority: int = 0,
        tenant: str = "default",
        timeout: float | None = None,
        no_cache: bool = False,
        progress: Progress | None = None,
        total_bytes: int | None = None,
        webhook: str | None = None,
    ) -> dict[str, Any]:
        """Submit (name, bytes) pairs as one job; returns the broker's acknowledgement once the job
        is durable: {"job_id", "tasks" (the queued tasks' ids), "cached" (how many were done at once from
        an equal earlier result), and "warning" only when the broker gave one (e.g. no live worker serves the
        job's model, so it waits)}.  Nothing is warned through `warnings`: safe from any thread.

        `files` is a sequence, or any iterable that yields the pairs lazily (memory then
        stays bounded by a few parts, whatever the job's size).  A job under PART_BYTES
        goes in one Submit; a bigger one is streamed in parts of about the broker's part
        size, UPLOAD_WINDOW of them in flight, each acknowledged once durable; the job
        exists only once the final Submit is acknowledged (an upload cut short leaves
        nothing: the broker drops it).  Names and sizes of a sequence are all checked
        before anything is sent (a lazy iterable's as each pair comes): an image bigger
        than `max_message_bytes` is refused with code too_large.
        `timeout` bounds the wait for the job's acknowledgement (default: the client's
        timeout, but at least 60 s); each part waits up to the client's timeout.
        `progress(bytes_acknowledged, total_bytes or None)` is called as parts are
        acknowledged; `total_bytes` defaults to the sum of a sequence's sizes.  `webhook`: a URL
        the broker POSTs a signed summary to when the job ends."""
        job = JobSpec(processor, dict(options or {}), priority, tenant, no_cache,
                      max(self.timeout, 60.0) if timeout is None else timeout, webhook)
        data = submit_job(self, files, job, progress, total_bytes)
        reply = {"job_id": str(data["job_id"]), "tasks": list(data.get("tasks") or []),
                 "cached": int(data.get("cached") or 0)}
        return {**reply, "warning": str(data["warning"])} if data.get("warning") else reply

    def submit(self, files: Iterable[tuple[str, bytes]], *, processor: str = "rembg",
               options: dict[str, Any] | None = None, priority: int = 0, tenant: str = "default",
               timeout: float | None = None, no_cache: bool = False, progress: Progress | None = None,
               total_bytes: int | None = None, webhook: str | None = None) -> str:
        """Submit (name, bytes) pairs as one job; returns the job id once it is durable.

        Everything as `submit_reply`, except that a warning in the broker's answer (e.g. no live
        worker serves the job's model, so it waits) comes as a `CutqWarning` through
        `warnings.warn`, after the job is stored."""
        reply = self.submit_reply(files, processor=processor, options=options, priority=priority, tenant=tenant,
                                  timeout=timeout, no_cache=no_cache, progress=progress, total_bytes=total_bytes,
                                  webhook=webhook)
        warn_of(reply)
        return str(reply["job_id"])

    def submit_paths(self, paths: Iterable[str | os.PathLike[str]], **kwargs: Any) -> str:
        """Submit image files and directories as one job (see `submit` for options).

        Every name and size is checked before anything is sent; each file is read only when
        its part is built, so a job of many GB needs a few parts' worth of memory."""
        reply = self.submit_paths_reply(paths, **kwargs)
        warn_of(reply)
        return str(reply["job_id"])

    def submit_paths_reply(self, paths: Iterable[str | os.PathLike[str]], **kwargs: Any) -> dict[str, Any]:
        """`submit_paths`, returning the acknowledgement with its warning, as `submit_reply` does."""
        files = collect_images(paths)
        kwargs.setdefault("total_bytes", total_size(files, self.max_message_bytes))
        return self.submit_reply(read_lazily(files), **kwargs)

    def status(self, job_id: str, *, tasks: bool = True, task_state: str | None = None, task_limit: int = 0,
               task_offset: int = 0) -> dict[str, Any]:
        """The job's state, per-state task counts and (with tasks=True) its task rows.

        `job_id` may be any unique prefix of an id (the reply's `job_id` is the whole one);
        an ambiguous one is refused with code ambiguous.  The rows can be a page, paged by
        the broker: `task_limit` rows (0: all) from `task_offset`, only `task_state` ones."""
        return self._request(p.Status(req=0, job_id=job_id, tasks=tasks, task_state=task_state,
                                      task_limit=task_limit, task_offset=task_offset)).data

    def list_jobs(
        self, state: str | None = None, *, search: str | None = None, limit: int = 50, offset: int = 0,
        sort: str = "created", descending: bool = True,
    ) -> dict[str, Any]:
        """A page of jobs: {"jobs": [...], "total": N}, every job sorted by the broker by `sort`
        (one of JOB_SORTS; newest first among equals), highest first unless not `descending`."""
        return self._request(p.ListJobs(req=0, state=state, search=search, limit=limit, offset=offset,
                                        sort=sort, descending=descending)).data

    def stats(self) -> dict[str, Any]:
        """Task counts by state, queue depth, throughput and worker totals."""
        return self._request(p.Stats(req=0)).data

    def workers(self) -> list[dict[str, Any]]:
        """Connected (and recently dead) workers."""
        workers: list[dict[str, Any]] = self._request(p.Workers(req=0)).data["workers"]
        return workers

    def cancel(self, job_id: str, task_ids: list[int] | None = None) -> dict[str, Any]:
        """Cancel queued and running tasks of a job: {"cancelled": N}."""
        return self._request(p.Cancel(req=0, job_id=job_id, task_ids=task_ids)).data

    def retry(self, job_id: str, task_ids: list[int] | None = None) -> dict[str, Any]:
        """Re-queue failed and cancelled tasks of a job: {"requeued": N}."""
        return self._request(p.Retry(req=0, job_id=job_id, task_ids=task_ids)).data

    def delete(self, job_id: str) -> dict[str, Any]:
        """Cancel what runs of a job, then remove it with its images and results:
        {"job_id", "deleted": True}.  Its status then says it is gone (code not_found)."""
        return self._request(p.Delete(req=0, job_id=job_id)).data

    def purge(self, state: str | None = None, older_than_s: float | None = None,
              tenant: str | None = None) -> dict[str, Any]:
        """Delete every finished job matching the filters (a client key: its own tenant's only).

        The broker deletes at most 1,000 per request; this asks again while it says there
        are more.  Returns {"deleted": total, "job_ids": [...]}."""
        deleted, job_ids = 0, []
        while True:
            data = self._request(p.Purge(req=0, state=state, older_than_s=older_than_s, tenant=tenant,
                                         limit=1000)).data
            deleted += int(data["deleted"])
            job_ids += data["job_ids"]
            if not data.get("more") or not data["deleted"]:
                return {"deleted": deleted, "job_ids": job_ids}

    def drain_worker(self, worker: str, drain: bool = True) -> dict[str, Any]:
        """Admin: the worker (name or id) takes no new tasks, or (drain=False) takes them again."""
        return self._request(p.DrainWorker(req=0, worker=worker, drain=drain)).data

    def pause(self, paused: bool = True, tenant: str | None = None) -> dict[str, Any]:
        """Pause or resume dispatch (globally, or for one tenant); persisted by the broker."""
        return self._request(p.Pause(req=0, paused=paused, tenant=tenant)).data

    def tenants(self) -> list[dict[str, Any]]:
        """Each tenant's policy (weight, caps), task counts and pause flag."""
        tenants: list[dict[str, Any]] = self._request(p.Tenants(req=0)).data["tenants"]
        return tenants

    def set_tenant(self, tenant: str, **policy: float) -> dict[str, Any]:
        """Set a tenant's weight, max_running, rate (tasks/s) or max_queued (admin only)."""
        return self._request(p.TenantSet(req=0, tenant=tenant, policy=policy)).data

    def fetch_result(self, task_id: int, what: str = "result") -> tuple[dict[str, Any], bytes]:
        """One task's result (or input) bytes with its metadata ({"name", "ext", ...})."""
        reply = self._request(p.Fetch(req=0, task_id=task_id, what=what), timeout=max(self.timeout, 60.0))
        return reply.data, reply.blobs[0]

    def fetch(self, job_id: str, out_dir: str | os.PathLike[str], *, problems: list[str] | None = None,
              not_done: list[dict[str, Any]] | None = None) -> list[Path]:
        """Write every done task's result of a job into out_dir; returns the files written.

        Each file is named by `shared.names.safe_result_name` (`<input stem>.<ext>`, one path
        component, distinct within the job: `a.jpg` and `a.png` become `a.png` and `a-2.png`),
        must resolve inside out_dir (a link pointing out is refused), and is written to a
        temporary name then renamed.  A result that cannot be fetched or written is skipped
        and the others still written: its one-line reason goes to `problems` if given, else a
        CutqError naming them is raised at the end.  No broker (BrokerUnavailable) stops at once.
        The tasks that are not done (failed, cancelled, still queued or running) are appended
        to `not_done` if given.  `job_id` may be a unique prefix.  A folder that cannot be
        made is a CutqError naming it, raised before anything is asked of the broker.
        """
        return fetch_job(self, job_id, Path(out_dir), problems, not_done)

    # ------------------------------------------------------------------ events

    def subscribe(self, job_id: str | None = None, ttl: float = 10.0) -> None:
        """Start (or renew) a pushed event stream for one job or, with None, everything."""
        self._request(p.Subscribe(req=0, job_id=job_id, ttl=ttl))
        self._subscription = (job_id, time.monotonic() + ttl / 2)

    def unsubscribe(self) -> None:
        self._subscription = None
        self._request(p.Unsubscribe(req=0))

    def next_events(self, timeout: float) -> list[dict[str, Any]]:
        """Events pushed since the last call, waiting up to `timeout` for the first one.

        Renews the subscription lease when it is half spent; raises BrokerUnavailable
        if a renewal goes unanswered.
        """
        deadline = time.monotonic() + timeout
        while not self._events:
            self._renew()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msg = self._receive(min(left, 0.5))
            if isinstance(msg, p.Events):
                self._events.extend(msg.events)
        out = list(self._events)
        self._events.clear()
        return out

    def _renew(self) -> None:
        if self._subscription and time.monotonic() >= self._subscription[1]:
            self.subscribe(self._subscription[0])

    def events(self, job_id: str | None = None, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Subscribe and yield events until `timeout` seconds pass (forever with None)."""
        self.subscribe(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            left = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            yield from self.next_events(min(1.0, left))

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job has no queued or running task; return its final status.

        Driven by pushed events; a status check every few seconds guards against a
        missed event (e.g. across a broker restart).
        """
        self.subscribe(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        status = self.status(job_id, tasks=False)
        job_id = status["job_id"]  # the whole id, if a prefix named it
        while status["state"] not in TERMINAL:
            if deadline is not None and time.monotonic() >= deadline:
                raise CutqError(f"job {job_id} still {status['state']} after {timeout:g}s", code="timeout")
            events = self.next_events(2.0)
            if not events or any(e.get("job_id") == job_id and e.get("kind") == "job" for e in events):
                status = self.status(job_id, tasks=False)
        return self.status(job_id)
