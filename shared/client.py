"""The cutq client library: the one way the CLI and the TUI talk to a broker.

Synchronous and single-threaded: one DEALER socket per Client, requests matched to
replies by `req` id, pushed events buffered in between.  Use one Client per thread.
Never imports textual.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import zmq

from shared import protocol as p
from shared.config import default_endpoint
from shared.names import name_key, safe_result_name, validate_input_name
from shared.security import Credentials
from shared.states import TERMINAL

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class CutqError(Exception):
    """An error the broker reported (or a client-side refusal); `code` is machine-readable."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class BrokerUnavailable(CutqError):
    """No reply from the broker within the timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="unavailable")


def collect_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and directories (non-recursive, sorted) into image files to submit."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise CutqError(f"no such file or directory: {path}", code="bad_request")
    if not found:
        raise CutqError("no image files to submit", code="bad_request")
    return found


class Client:
    """A connection to one broker.  `timeout` bounds each request's wait for a reply."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        timeout: float = 15.0,
        context: zmq.Context | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        """`credentials` default to $CUTQ_KEY/$CUTQ_SERVER_KEY when set (CURVE), else none."""
        self.endpoint = endpoint or default_endpoint()
        self.credentials = credentials if credentials is not None else Credentials.from_env(os.environ)
        self.timeout = timeout
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._ids = itertools.count(1)
        self._events: deque[dict] = deque()
        self._sock: zmq.Socket | None = None
        self._subscription: tuple[str | None, float] | None = None
        self._connect()

    # ------------------------------------------------------------------ plumbing

    def _connect(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # don't queue requests for a broker that isn't there
        if self.credentials is not None:
            self.credentials.apply(sock)
        sock.connect(self.endpoint)
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

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _receive(self, timeout: float) -> p.Message | None:
        assert self._sock is not None
        if not self._sock.poll(max(0, int(timeout * 1000))):
            return None
        frames = self._sock.recv_multipart(copy=True)
        try:
            return p.decode(frames)
        except p.ProtocolError:
            return None  # a garbled frame from the broker is dropped, not fatal

    def _request(self, msg: p.Message, timeout: float | None = None) -> p.Reply:
        timeout = self.timeout if timeout is None else timeout
        assert self._sock is not None
        msg.req = next(self._ids)  # type: ignore[attr-defined]
        deadline = time.monotonic() + timeout
        # IMMEDIATE: the socket takes a message only once connected; wait for that, bounded
        if not self._sock.poll(int(timeout * 1000), zmq.POLLOUT):
            self._reconnect()
            raise BrokerUnavailable(f"cannot connect to broker at {self.endpoint} within {timeout:g}s")
        self._sock.send_multipart(p.encode(msg), copy=False)
        while True:
            left = deadline - time.monotonic()
            reply = self._receive(left) if left > 0 else None
            if reply is None:
                self._reconnect()
                raise BrokerUnavailable(f"no reply from broker at {self.endpoint} within {timeout:g}s")
            if isinstance(reply, p.Events):
                self._events.extend(reply.events)
            elif isinstance(reply, p.Reply) and reply.req == msg.req:  # type: ignore[attr-defined]
                if not reply.ok:
                    raise CutqError(reply.error, code=reply.code or "error")
                return reply

    # ------------------------------------------------------------------ requests

    def submit(
        self,
        files: Sequence[tuple[str, bytes]],
        *,
        processor: str = "rembg",
        options: dict[str, Any] | None = None,
        priority: int = 0,
        tenant: str = "default",
        timeout: float | None = None,
    ) -> str:
        """Submit (name, bytes) pairs as one job; returns the job id once it is durable.

        `timeout` bounds the wait for the acknowledgement (default: the client's timeout,
        but at least 60 s, since a large upload takes a while to commit)."""
        if not files:
            raise CutqError("a job needs at least one image", code="bad_request")
        for name, _ in files:  # before anything is sent
            problem = validate_input_name(name)
            if problem:
                raise CutqError(problem, code="bad_request")
        msg = p.Submit(
            req=0, names=[n for n, _ in files], processor=processor,
            options=dict(options or {}), priority=priority, tenant=tenant,
        )
        msg.blobs = [data for _, data in files]
        wait = max(self.timeout, 60.0) if timeout is None else timeout
        return self._request(msg, timeout=wait).data["job_id"]

    def submit_paths(self, paths: Iterable[str | os.PathLike], **kwargs: Any) -> str:
        """Submit image files and directories as one job (see `submit` for options)."""
        files = [(f.name, f.read_bytes()) for f in collect_images(paths)]
        return self.submit(files, **kwargs)

    def status(self, job_id: str, *, tasks: bool = True) -> dict[str, Any]:
        """The job's state, per-state task counts and (with tasks=True) its task rows."""
        return self._request(p.Status(req=0, job_id=job_id, tasks=tasks)).data

    def list_jobs(
        self, state: str | None = None, *, search: str | None = None, limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        """A page of jobs, newest first: {"jobs": [...], "total": N}."""
        return self._request(p.ListJobs(req=0, state=state, search=search, limit=limit, offset=offset)).data

    def stats(self) -> dict[str, Any]:
        """Task counts by state, queue depth, throughput and worker totals."""
        return self._request(p.Stats(req=0)).data

    def workers(self) -> list[dict[str, Any]]:
        """Connected (and recently dead) workers."""
        return self._request(p.Workers(req=0)).data["workers"]

    def cancel(self, job_id: str, task_ids: list[int] | None = None) -> dict[str, Any]:
        """Cancel queued and running tasks of a job: {"cancelled": N}."""
        return self._request(p.Cancel(req=0, job_id=job_id, task_ids=task_ids)).data

    def retry(self, job_id: str, task_ids: list[int] | None = None) -> dict[str, Any]:
        """Re-queue failed and cancelled tasks of a job: {"requeued": N}."""
        return self._request(p.Retry(req=0, job_id=job_id, task_ids=task_ids)).data

    def pause(self, paused: bool = True, tenant: str | None = None) -> dict[str, Any]:
        """Pause or resume dispatch (globally, or for one tenant); persisted by the broker."""
        return self._request(p.Pause(req=0, paused=paused, tenant=tenant)).data

    def tenants(self) -> list[dict[str, Any]]:
        """Each tenant's policy (weight, caps), task counts and pause flag."""
        return self._request(p.Tenants(req=0)).data["tenants"]

    def set_tenant(self, tenant: str, **policy: float) -> dict[str, Any]:
        """Set a tenant's weight, max_running, rate (tasks/s) or max_queued (admin only)."""
        return self._request(p.TenantSet(req=0, tenant=tenant, policy=policy)).data

    def fetch_result(self, task_id: int, what: str = "result") -> tuple[dict[str, Any], bytes]:
        """One task's result (or input) bytes with its metadata ({"name", "ext", ...})."""
        reply = self._request(p.Fetch(req=0, task_id=task_id, what=what), timeout=max(self.timeout, 60.0))
        return reply.data, reply.blobs[0]

    def fetch(self, job_id: str, out_dir: str | os.PathLike, *, problems: list[str] | None = None) -> list[Path]:
        """Write every done task's result of a job into out_dir; returns the files written.

        Each file is named by `shared.names.safe_result_name` (`<input stem>.<ext>`, one path
        component, distinct within the job: `a.jpg` and `a.png` become `a.png` and `a-2.png`),
        must resolve inside out_dir (a link pointing out is refused), and is written to a
        temporary name then renamed.  A result that cannot be fetched or written is skipped
        and the others still written: its one-line reason goes to `problems` if given, else a
        CutqError naming them is raised at the end.  No broker (BrokerUnavailable) stops at once.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        root = out.resolve()
        written: list[Path] = []
        skipped: list[str] = []
        taken: set[str] = set()
        for task in self.status(job_id)["tasks"]:
            if task["state"] != "done":
                continue
            label = f"task {task['task_id']} ({_label(task['name'])})"
            try:
                meta, data = self.fetch_result(task["task_id"])
            except BrokerUnavailable:
                raise
            except CutqError as e:
                skipped.append(f"{label}: {e}")
                continue
            name = safe_result_name(task["name"], meta.get("ext"), task["task_id"], taken)
            taken.add(name_key(name))
            try:
                _write_inside(root, name, data)
            except (OSError, CutqError) as e:
                skipped.append(f"{label}: not written: {e}")
                continue
            written.append(out / name)
        if problems is not None:
            problems.extend(skipped)
        elif skipped:
            raise CutqError(f"{len(skipped)} result(s) of job {job_id} not written "
                            f"({len(written)} written): {skipped[0]}", code="fetch_failed")
        return written

    # ------------------------------------------------------------------ events

    def subscribe(self, job_id: str | None = None, ttl: float = 10.0) -> None:
        """Start (or renew) a pushed event stream for one job or, with None, everything."""
        self._request(p.Subscribe(req=0, job_id=job_id, ttl=ttl))
        self._subscription = (job_id, time.monotonic() + ttl / 2)

    def unsubscribe(self) -> None:
        self._subscription = None
        self._request(p.Unsubscribe(req=0))

    def next_events(self, timeout: float) -> list[dict]:
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

    def events(self, job_id: str | None = None, timeout: float | None = None) -> Iterator[dict]:
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
        while status["state"] not in TERMINAL:
            if deadline is not None and time.monotonic() >= deadline:
                raise CutqError(f"job {job_id} still {status['state']} after {timeout:g}s", code="timeout")
            events = self.next_events(2.0)
            if not events or any(e.get("job_id") == job_id and e.get("kind") == "job" for e in events):
                status = self.status(job_id, tasks=False)
        return self.status(job_id)


def result_filename(input_name: str, ext: str) -> str:
    """`photo.jpg` + `png` -> `photo.png`: results are named after their input's stem.

    For display only: it trusts both parts.  Files are named by `shared.names.safe_result_name`."""
    return f"{Path(input_name).stem}.{ext}"


def _label(name: object, limit: int = 60) -> str:
    """An untrusted name shortened and quoted for a one-line message."""
    text = str(name)
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def _write_inside(root: Path, name: str, data: bytes) -> Path:
    """Write `data` as root/name, refusing a target that resolves outside `root` (`root` resolved).

    The bytes go to a fresh hidden temporary file in `root` (O_EXCL, never following a link),
    which then replaces root/name: a link already at root/name is replaced, not written through.
    """
    target = root / name
    resolved = target.resolve()
    if resolved.parent != root or resolved.name in ("", ".", ".."):
        raise CutqError(f"{name!r} resolves to {str(resolved)!r}, outside {str(root)!r}; refused",
                        code="unsafe_path")
    tmp = root / f".{name}.{os.getpid()}.part"
    tmp.unlink(missing_ok=True)  # left by a killed fetch of the same pid; a link is removed, not followed
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return target
