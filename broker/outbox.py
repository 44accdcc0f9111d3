"""What one broker turn will send, held back until the turn's writes are committed.

Replies to read-only requests are marked so: when the commit fails they are still
sent as they are (their data did not depend on the turn's writes), while every
other acknowledgement becomes an error.
"""

from __future__ import annotations

import mmap
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Union

from broker.registry import WorkerRecord
from broker.store import Claimed
from shared import protocol as p

Blob = Union[bytes, mmap.mmap]  # noqa: UP007 (a runtime alias)

# requests that change nothing: answered even while the store refuses writes
READ_ONLY_REQUESTS: frozenset[type[p.Message]] = frozenset(
    {p.Status, p.ListJobs, p.Stats, p.Workers, p.Fetch, p.Tenants, p.Subscribe, p.Unsubscribe}
)


@dataclass
class Outbox:
    """Replies, dispatches, cancels and events of one turn, sent only after its commit."""

    replies: list[tuple[bytes, p.Reply, bool]] = field(default_factory=list)  # (ident, reply, read_only)
    frames: list[tuple[bytes, list[bytes]]] = field(default_factory=list)  # not state-bearing
    dispatches: list[tuple[WorkerRecord, list[tuple[Claimed, Blob]]]] = field(default_factory=list)
    cancels: dict[bytes, list[int]] = field(default_factory=lambda: defaultdict(list))
    results_seen: list[tuple[int, int, bytes]] = field(default_factory=list)
    worker_events: list[dict[str, Any]] = field(default_factory=list)

    def reply(self, ident: bytes, msg: p.Message, **data: Any) -> None:
        """Acknowledge `msg` with `data`."""
        read_only = type(msg) in READ_ONLY_REQUESTS
        self.replies.append((ident, p.Reply(req=getattr(msg, "req", 0), ok=True, data=data), read_only))

    def reply_blobs(self, ident: bytes, msg: p.Message, data: dict[str, Any], blobs: list[bytes]) -> None:
        """Acknowledge `msg` with `data` and binary frames."""
        reply = p.Reply(req=getattr(msg, "req", 0), ok=True, data=data)
        reply.blobs = blobs
        self.replies.append((ident, reply, type(msg) in READ_ONLY_REQUESTS))

    def error(self, ident: bytes, msg: p.Message | None, error: str, code: str, req: int | None = None) -> None:
        """Refuse `msg` with a one-line reason and a machine-readable code."""
        if req is None:
            req = getattr(msg, "req", 0)
        self.replies.append((ident, p.Reply(req=req, ok=False, error=error, code=code), True))
