"""Messages the data feed posts to the app: small dataclasses, one per kind of news.

The feed thread builds them and calls `app.post_message` (thread-safe); handlers
run on the UI thread.  Bursts of broker events arrive already coalesced into one
`FeedBatch`; a newer `StatsUpdated` replaces an older one still in the queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.message import Message

from tui.model import JobsQuery


@dataclass
class Connected(Message):
    """The broker answered (first connect or after an outage)."""

    endpoint: str


@dataclass
class Disconnected(Message):
    """The broker stopped answering; the feed retries in `retry_in` seconds."""

    endpoint: str
    error: str
    retry_in: float
    since: float  # wall time of the first failure in this outage


@dataclass
class StatsUpdated(Message):
    """A `stats()` snapshot (from a load or the broker's once-a-second stats event)."""

    stats: dict

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StatsUpdated)


@dataclass
class WorkersLoaded(Message):
    """A fresh `workers()` snapshot."""

    workers: list[dict]


@dataclass
class JobsPage(Message):
    """One page of the jobs list for `query`."""

    query: JobsQuery
    jobs: list[dict]
    total: int


@dataclass
class JobDetail(Message):
    """`status(job_id)` with its tasks, for the job detail screen."""

    status: dict


@dataclass
class JobMissing(Message):
    """The watched job does not exist (any more)."""

    job_id: str
    error: str


@dataclass
class FeedBatch(Message):
    """Broker events since the last batch, coalesced.

    `stats`: the latest stats event, if any.  `jobs`: the latest `job` event per job,
    for jobs on the shown page or being watched.  `events`: task, progress and worker
    events in arrival order, the latest one per task.  `received`: events folded in;
    `dropped`: those merged away or of unknown kinds.  `counts_delta`: what job events
    changed in the task counts since the latest stats (so the overview moves with the rows).
    """

    stats: dict | None = None
    jobs: dict[str, dict] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    received: int = 0
    dropped: int = 0
    counts_delta: dict[str, int] = field(default_factory=dict)
