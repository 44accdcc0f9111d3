"""Pipelined submissions: many small jobs from one thread without waiting a round trip for each.

`Client.submit` sends a job and waits for its acknowledgement, so a script that submits one
photo per call is bound by round trips (and the broker's group commit gets one job per fsync).
A `PipelinedSubmitter` keeps up to `window` submissions in flight on its own DEALER socket and
matches acknowledgements to them by request id:

    with PipelinedSubmitter(endpoint, window=64) as s:
        futures = [s.submit([(path.name, path.read_bytes())]) for path in photos]
    job_ids = [f.result() for f in futures]   # leaving the block waited for every acknowledgement

A submission is acknowledged, as with `Client.submit`, only once its images are durable and its
rows committed; `Submission.result()` gives the job id (or raises the broker's refusal as
`CutqError`), `Submission.data` the whole reply (e.g. `warning`, which also comes as a
`CutqWarning` through `warnings.warn` when its acknowledgement is read).  Single-threaded like `Client`:
one submitter per thread; replies are read while you submit, in `flush()` and in `result()`.
Credentials as `Client`: explicit, else $CUTQ_KEY/$CUTQ_SERVER_KEY, else none.  A job of
PART_BYTES or more goes through a `Client` (streamed in parts), in order, after the window drains.
Submissions are not idempotent, so nothing is sent twice: when the broker does not answer
within `timeout`, every submission still in flight fails with BrokerUnavailable (it may or may
not have been stored: `cutq list --search NAME` tells).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from typing import Any

import zmq

from shared import protocol as p
from shared.client import MAX_MESSAGE_BYTES, BrokerUnavailable, Client, CutqError
from shared.config import default_endpoint
from shared.errors import warn_of
from shared.names import validate_input_name
from shared.security import Credentials
from shared.uploads import PART_BYTES

_FRAMES_OVERHEAD = 512  # version, type and msgpack body around one image, besides its name


class Submission:
    """One pipelined submission: its job id once the broker has acknowledged it durable."""

    __slots__ = ("_owner", "req", "names", "data", "error")

    def __init__(self, owner: PipelinedSubmitter | None, req: int, names: list[str]) -> None:
        self._owner = owner
        self.req = req
        self.names = names
        self.data: dict[str, Any] | None = None  # the acknowledgement's data (job_id, tasks, cached, warning?)
        self.error: CutqError | None = None

    def done(self) -> bool:
        return self.data is not None or self.error is not None

    def result(self, timeout: float | None = None) -> str:
        """The job id, waiting up to `timeout` (None: the submitter's) for the acknowledgement;
        raises CutqError (the broker's refusal) or BrokerUnavailable."""
        if not self.done() and self._owner is not None:
            self._owner._wait_for(self, timeout)
        if self.error is not None:
            raise self.error
        assert self.data is not None
        return str(self.data["job_id"])

    def exception(self, timeout: float | None = None) -> CutqError | None:
        try:
            self.result(timeout)
        except CutqError as e:
            return e
        return None

    def __repr__(self) -> str:
        state = "pending" if not self.done() else "failed" if self.error else f"job {(self.data or {}).get('job_id')}"
        return f"<Submission req={self.req} {len(self.names)} images {state}>"


class PipelinedSubmitter:
    """A window of submissions in flight on one DEALER socket (see the module's docstring)."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        window: int = 64,
        timeout: float = 60.0,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        credentials: Credentials | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        """`window`: submissions sent and not yet acknowledged, at most; `timeout`: how long the
        broker may stay silent while some are in flight before they fail."""
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.endpoint = endpoint or default_endpoint()
        self.credentials = credentials if credentials is not None else Credentials.from_env(os.environ)
        self.window, self.timeout, self.max_message_bytes = window, timeout, max_message_bytes
        self._own_context = context is None
        self._ctx: zmq.Context[zmq.Socket[bytes]] = context or zmq.Context()
        self._ids = itertools.count(1)
        self._pending: dict[int, Submission] = {}
        self._client: Client | None = None  # for jobs too big for one message, made when needed
        self._sock: zmq.Socket[bytes] | None = None
        self._connect()

    # ------------------------------------------------------------------ socket

    def _connect(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # don't queue submissions for a broker that isn't there
        sock.setsockopt(zmq.SNDHWM, max(1000, 2 * self.window))
        if self.credentials is not None:
            self.credentials.apply(sock)
        sock.connect(self.endpoint)
        self._sock = sock

    def close(self) -> None:
        """Close the socket (and the context, if this submitter made it); pending submissions are
        abandoned (call `flush()` first to wait for them)."""
        for sub in self._pending.values():
            sub.error = CutqError("the submitter was closed before the broker answered", code="closed")
        self._pending.clear()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._own_context:
            self._ctx.term()

    def __enter__(self) -> PipelinedSubmitter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            if exc_type is None:
                self.flush()
        finally:
            self.close()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ submitting

    def submit(
        self,
        files: Sequence[tuple[str, bytes]],
        *,
        processor: str = "rembg",
        options: dict[str, Any] | None = None,
        priority: int = 0,
        tenant: str = "default",
        no_cache: bool = False,
        webhook: str | None = None,
    ) -> Submission:
        """Send (name, bytes) pairs as one job; returns at once unless `window` submissions are in
        flight (then it first reads acknowledgements until one slot is free)."""
        if not files:
            raise CutqError("a job needs at least one image", code="bad_request")
        size = 0
        for name, data in files:
            self._check_image(name, len(data))
            size += len(data)
        names = [name for name, _ in files]
        fields: dict[str, Any] = {"processor": processor, "options": dict(options or {}), "priority": priority,
                                  "tenant": tenant, "no_cache": no_cache}
        if webhook is not None:
            fields["webhook"] = webhook
        if size >= PART_BYTES:
            return self._submit_streamed(files, names, fields)
        while len(self._pending) >= self.window:
            self._read(self.timeout)
        msg = p.Submit(req=next(self._ids), names=names, **fields)
        msg.blobs = [data for _, data in files]
        sub = Submission(self, msg.req, names)
        self._send(msg)
        self._pending[msg.req] = sub
        self._read(0)  # pick up what has arrived meanwhile, without waiting
        return sub

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every submission is acknowledged (or failed)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self._pending:
            self._read(max(0.0, deadline - time.monotonic()))

    def _submit_streamed(self, files: Sequence[tuple[str, bytes]], names: list[str],
                         fields: dict[str, Any]) -> Submission:
        """A job too big for one message: through a Client (in parts), once the window is empty."""
        self.flush()
        if self._client is None:
            self._client = Client(self.endpoint, timeout=self.timeout, context=self._ctx,
                                  credentials=self.credentials, max_message_bytes=self.max_message_bytes)
        sub = Submission(None, 0, names)
        try:
            job_id = self._client.submit(files, **fields)
        except CutqError as e:
            sub.error = e
        else:
            sub.data = {"job_id": job_id}
        return sub

    def _check_image(self, name: str, size: int) -> None:
        problem = validate_input_name(name)
        if problem:
            raise CutqError(problem, code="bad_request")
        limit = self.max_message_bytes - _FRAMES_OVERHEAD - len(name.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise CutqError(f"{name!r} is {size} bytes, more than one message to the broker may carry", "too_large")

    def _send(self, msg: p.Message) -> None:
        assert self._sock is not None
        if not self._sock.poll(max(0, int(self.timeout * 1000)), zmq.POLLOUT):
            self._fail_pending(f"cannot connect to broker at {self.endpoint} within {self.timeout:g}s")
            raise BrokerUnavailable(f"cannot connect to broker at {self.endpoint} within {self.timeout:g}s")
        self._sock.send_multipart(p.encode(msg), copy=False)

    # ------------------------------------------------------------------ acknowledgements

    def _read(self, timeout: float) -> None:
        """Apply every reply that has arrived, waiting up to `timeout` for the first one; when
        submissions are in flight and nothing comes for a whole `self.timeout`, they fail."""
        assert self._sock is not None
        sock = self._sock
        if not sock.poll(max(0, int(timeout * 1000))):
            if timeout >= self.timeout and self._pending:
                self._fail_pending(f"no reply from broker at {self.endpoint} within {self.timeout:g}s")
            return
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = p.decode(frames)
            except p.ProtocolError:
                continue  # a garbled frame is dropped, as Client does
            if not isinstance(reply, p.Reply):
                continue  # no events on this socket: it never subscribes
            sub = self._pending.pop(reply.req, None)
            if sub is None:
                continue
            if reply.ok:
                sub.data = reply.data
                warn_of(reply.data)  # e.g. no live worker serves the model: a CutqWarning, once per submission
            else:
                sub.error = CutqError(reply.error, code=reply.code or "error")

    def _wait_for(self, sub: Submission, timeout: float | None) -> None:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not sub.done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerUnavailable(f"no acknowledgement from broker at {self.endpoint} within "
                                        f"{self.timeout if timeout is None else timeout:g}s")
            self._read(min(left, self.timeout))

    def _fail_pending(self, why: str) -> None:
        """The broker went silent: what is in flight is unknown, so it fails (never resent: a
        submission is not idempotent), and a fresh socket drops any late replies."""
        for sub in self._pending.values():
            sub.error = BrokerUnavailable(f"{why}; the job may or may not have been stored")
        self._pending.clear()
        if self._sock is not None:
            self._sock.close(linger=0)
        self._connect()
