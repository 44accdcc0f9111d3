"""Folding a burst of broker events into the next `FeedBatch` the feed posts to the app
(latest state per job and per task, worker events in order, the latest stats), with the
job counts' change since the last stats."""

from __future__ import annotations

from tui.messages import FeedBatch
from tui.model import COUNT_KEYS


class Coalescer:
    """Folds broker events into the next batch: latest job event per job, latest task
    event per task, worker events kept in order, the latest stats.

    It also keeps the overview's counts in step with the job rows: the broker sends stats
    once a second but job events at every turn, so between two stats the batch carries
    `counts_delta`, what the job events since the last stats changed (each job event holds
    the job's counts; the change is new minus the last counts seen for that job).
    """

    def __init__(self) -> None:
        self.known: dict[str, dict[str, int]] = {}  # job id -> its counts in the last event
        self.delta: dict[str, int] = {}
        self.reset()

    def reset(self) -> None:
        self.stats: dict | None = None
        self.jobs: dict[str, dict] = {}
        self.events: dict[tuple, dict] = {}
        self.received = 0
        self.dropped = 0
        self._n = 0

    @property
    def pending(self) -> bool:
        return bool(self.stats is not None or self.jobs or self.events)

    def add(self, events: list[dict]) -> None:
        for ev in events:
            self.received += 1
            kind = ev.get("kind")
            if kind == "stats":
                self.stats = ev
                self.delta = {}
            elif kind == "job" and ev.get("job_id"):
                self.dropped += ev["job_id"] in self.jobs
                self.jobs[ev["job_id"]] = ev
                self._count(ev)
            elif kind in ("task", "progress") and ev.get("task_id") is not None:
                key = (kind, ev["task_id"])
                self.dropped += self.events.pop(key, None) is not None
                self.events[key] = ev  # re-inserted: keeps arrival order of last updates
            elif kind == "worker":
                self._n += 1
                self.events[("worker", self._n)] = ev
            else:
                self.dropped += 1

    def _count(self, ev: dict) -> None:
        jid = ev["job_id"]
        counts = {k: int(ev.get(k) or 0) for k in COUNT_KEYS}
        before = self.known.get(jid)
        if before is not None:  # a job first heard of now: its change is in the next stats
            for k in COUNT_KEYS:
                if counts[k] != before[k]:
                    self.delta[k] = self.delta.get(k, 0) + counts[k] - before[k]
        if counts["queued"] or counts["running"]:
            self.known[jid] = counts
        else:
            self.known.pop(jid, None)  # finished: only a retry changes it again

    def forget_counts(self) -> None:
        """A fresh stats snapshot was loaded (not from the stream): start the delta again."""
        self.delta = {}

    def take(self) -> FeedBatch:
        batch = FeedBatch(stats=self.stats, jobs=self.jobs, events=list(self.events.values()),
                          received=self.received, dropped=self.dropped, counts_delta=dict(self.delta))
        self.reset()
        return batch
