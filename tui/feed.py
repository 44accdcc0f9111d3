"""The dashboard's data side: one thread that owns a client, follows the broker's event
stream and posts coalesced Messages to the app.

    app  --query_jobs / watch_job / resync-->  Feed thread  --Client-->  broker
    app  <--JobsPage / JobDetail / FeedBatch / Connected / Disconnected--

Loads (jobs page, job detail, workers) run on the same socket as the event stream,
so a snapshot and the events after it arrive in the broker's order; events carry
full entity state, so applying them after the snapshot converges.

Events are folded into one `FeedBatch` at most every `flush_interval`, and a new
batch is posted only after the app has applied the previous one (`ack`), so a slow
frame merges more events into the next batch instead of queueing redraws.

When the broker stops answering the feed posts `Disconnected`, retries with a
doubling backoff, and on success re-subscribes and reloads everything.

Actions (submit, cancel, retry, pause, fetch) don't go through the thread: each
call opens its own short-lived client, so a long upload never stalls the stream.
Call them from worker threads, never from the UI thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
from textual.message import Message

from shared.client import BrokerUnavailable, CutqError
from tui.coalesce import Coalescer
from tui.messages import (
    Connected,
    Disconnected,
    JobDetail,
    JobMissing,
    JobsPage,
    StatsUpdated,
    WorkersLoaded,
)
from tui.model import JobsQuery
from tui.sources import BrokerSource, Source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeedConfig:
    """Timings of the feed thread."""

    request_timeout: float = 2.0  # a load that takes longer means the broker is gone
    action_timeout: float = 15.0
    flush_interval: float = 0.1  # at most ~10 batches a second reach the UI
    # Stats come every second: after this much silence, ask the broker with a short wait, so a
    # dead broker shows as such within silence_probe + probe_timeout (2 s)
    silence_probe: float = 1.25
    probe_timeout: float = 0.75
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    jobs_reload_min: float = 1.0  # spacing of page reloads triggered by new jobs
    workers_resync: float = 5.0  # heartbeat ages and throughput are not in events; 0 turns it off
    subscribe_ttl: float = 10.0


class Feed:
    """Live data for the dashboard from one source (a broker, or fixed data).

    `connect` opens a new connection (a Client, or anything with the Source methods);
    the thread owns one, and each action opens and closes its own.
    """

    def __init__(
        self,
        connect: Callable[[float], Source],
        *,
        label: str,
        config: FeedConfig | None = None,
        clock: Callable[[], float] = time.time,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self._open = connect
        self._on_stop = on_stop  # frees what `connect` shares (a ZeroMQ context) once the thread is done
        self.label = label
        self.config = config or FeedConfig()
        self.clock = clock
        self._post: Callable[[Message], object] = lambda m: None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._acked = threading.Event()
        self._acked.set()
        self._lock = threading.Lock()
        self._want_query = JobsQuery()
        self._want_watch: str | None = None
        self._want_reload = False
        self._loaded_query: JobsQuery | None = None
        self._loaded_watch: str | None = None
        self._page_ids: set[str] = set()
        self._page_floor = 0.0  # creation time a job needs to make it onto a full first page
        self._backoff = self.config.backoff_initial
        self._outage_since: float | None = None
        self._reload_floor = 0.0
        self._coalescer: Coalescer | None = None
        self._heard = 0.0  # monotonic time of the last event or answer from the broker
        self.connected = False

    # ------------------------------------------------------------------ app side (UI thread)

    def start(self, post: Callable[[Message], object]) -> None:
        """Start the thread; `post` receives every Message (thread-safe, e.g. app.post_message)."""
        self._post = post
        self._thread = threading.Thread(target=self._run, name="cutq-feed", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """End the thread (it finishes the request in flight: at most `request_timeout`)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.config.request_timeout + 1.0 if timeout is None else timeout)
            if self._thread.is_alive():
                return  # a daemon thread: it ends with the process; its sockets keep the context
        if self._on_stop is not None:
            # off this thread: an action still running (an upload) holds a socket until it ends
            threading.Thread(target=self._on_stop, name="cutq-feed-stop", daemon=True).start()
            self._on_stop = None

    def query_jobs(self, query: JobsQuery) -> None:
        """Show this page of jobs (the feed loads it and posts JobsPage)."""
        with self._lock:
            self._want_query = query
            self._loaded_query = None
        self._wake.set()

    def watch_job(self, job_id: str | None) -> None:
        """Follow one job's tasks (posts JobDetail, then its task events in batches)."""
        with self._lock:
            self._want_watch = job_id
            self._loaded_watch = None
        self._wake.set()

    def resync(self) -> None:
        """Reload everything now (and reconnect at once if the broker is away)."""
        with self._lock:
            self._want_reload = True
        self._wake.set()

    def ack(self) -> None:
        """The app has applied the last FeedBatch; the next one may be posted."""
        self._acked.set()

    # ------------------------------------------------------------------ actions (worker threads)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run one client call on a fresh connection, e.g. call("cancel", job_id)."""
        source = self._open(self.config.action_timeout)
        try:
            return getattr(source, method)(*args, **kwargs)
        finally:
            source.close()

    def call_each(self, method: str, calls: list[tuple]) -> list[Any]:
        """The same call for several arguments on one connection (bulk cancel, delete): each
        result, or the CutqError it raised; an unreachable broker ends the run (raised)."""
        source = self._open(self.config.action_timeout)
        out: list[Any] = []
        try:
            for args in calls:
                try:
                    out.append(getattr(source, method)(*args))
                except BrokerUnavailable:
                    raise
                except CutqError as e:
                    out.append(e)
        finally:
            source.close()
        return out

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        source: Source | None = None
        while not self._stop.is_set():
            try:
                if source is None:
                    source = self._open(self.config.request_timeout)
                self._session(source)
            except CutqError as e:
                self._outage(str(e))
            except Exception:  # a bug here must not freeze the dashboard silently
                log.exception("feed thread error; starting over")
                if source is not None:
                    source.close()
                    source = None
                self._outage("internal error in the feed (see the log)")
        if source is not None:
            source.close()

    def _outage(self, error: str) -> None:
        self.connected = False
        if self._outage_since is None:
            self._outage_since = self.clock()
        log.info("feed: %s; retrying in %.1fs", error, self._backoff)
        self._post(Disconnected(self.label, error, self._backoff, self._outage_since))
        self._sleep(self._backoff)
        self._backoff = min(self._backoff * 2, self.config.backoff_max)

    def _sleep(self, seconds: float) -> None:
        """Wait out a backoff; a resync request or stop cuts it short."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._wake.wait(max(0.0, deadline - time.monotonic()))
            self._wake.clear()
            with self._lock:
                if self._want_reload:
                    return

    def _bound(self, source: Source, now: float | None = None) -> None:
        """No request in a session waits past the outage rule: the broker was last heard from at
        `_heard`; after silence_probe + probe_timeout it is gone, so a request started then waits
        only what is left (at least probe_timeout).  A slow answer is a loop that stalled as long."""
        if hasattr(source, "timeout"):
            cfg = self.config
            now = time.monotonic() if now is None else now
            source.timeout = max(cfg.probe_timeout, self._heard + cfg.silence_probe + cfg.probe_timeout - now)

    def _session(self, source: Source) -> None:
        cfg = self.config
        if hasattr(source, "timeout"):
            source.timeout = cfg.request_timeout  # connecting: the full wait
        source.subscribe(None, ttl=cfg.subscribe_ttl)
        self._load_all(source)
        self._heard = time.monotonic()
        self.connected = True
        self._backoff, self._outage_since = cfg.backoff_initial, None
        self._acked.set()
        self._post(Connected(self.label))
        coalescer = self._coalescer = Coalescer()
        now = time.monotonic()
        last_event = last_flush = last_workers = now
        next_jobs_reload: float | None = None
        workers_due = False
        while not self._stop.is_set():
            self._bound(source)
            self._serve(source)
            # short waits: a request from the app (a page, a job) is served at the next turn
            wait = cfg.flush_interval - (time.monotonic() - last_flush) if coalescer.pending else cfg.flush_interval
            events = source.next_events(max(0.0, min(wait, 0.05)))
            now = time.monotonic()
            if events:
                last_event = self._heard = now
                coalescer.add(events)
                reload_jobs, workers_changed = self._triggers(events)
                if reload_jobs and next_jobs_reload is None:
                    next_jobs_reload = max(now, self._reload_floor)
                workers_due |= workers_changed
            elif now - last_event > cfg.silence_probe:
                # Stats arrive every second; silence means the broker is gone (the probe
                # raises) or restarted and forgot our lease: re-subscribe and reload.
                source.probe(cfg.probe_timeout)
                last_event = self._heard = time.monotonic()
                self._bound(source)
                source.subscribe(None, ttl=cfg.subscribe_ttl)
                self._load_all(source)
                continue
            self._bound(source, now)
            if next_jobs_reload is not None and now >= next_jobs_reload:
                self._load_jobs(source)
                next_jobs_reload = None
                self._reload_floor = now + cfg.jobs_reload_min
            if workers_due or (cfg.workers_resync and now - last_workers >= cfg.workers_resync):
                self._post(WorkersLoaded(source.workers()))
                last_workers, workers_due = now, False
            if coalescer.pending and now - last_flush >= cfg.flush_interval and self._acked.is_set():
                batch = coalescer.take()
                batch.jobs = {k: v for k, v in batch.jobs.items()
                              if k in self._page_ids or k == self._loaded_watch}
                self._acked.clear()
                self._post(batch)
                last_flush = now

    def _triggers(self, events: list[dict]) -> tuple[bool, bool]:
        """Whether these events call for a page reload (a new job belongs on it, or a job
        left the filtered state) and a workers snapshot (a join or a death)."""
        reload_jobs = workers = False
        query = self._loaded_query or self._want_query
        for ev in events:
            kind = ev.get("kind")
            if kind == "job":
                jid = ev.get("job_id")
                if jid in self._page_ids:
                    if query.state and ev.get("state") != query.state:
                        reload_jobs = True
                elif query.matches_new_job(ev) and (ev.get("created") or 0) >= self._page_floor:
                    reload_jobs = True  # newer than the page's oldest row: it belongs on the page
            elif kind == "worker":
                workers = True
        return reload_jobs, workers

    def _serve(self, source: Source) -> None:
        """Answer what the app asked for since the last turn."""
        self._wake.clear()
        with self._lock:
            reload_all, self._want_reload = self._want_reload, False
            query_due = self._loaded_query != self._want_query
            watch_due = self._loaded_watch != self._want_watch
        if reload_all:
            source.subscribe(None, ttl=self.config.subscribe_ttl)
            self._load_all(source)
            return
        if query_due:
            self._load_jobs(source)
        if watch_due:
            self._load_watch(source)

    def _load_all(self, source: Source) -> None:
        if self._coalescer is not None:
            self._coalescer.forget_counts()
        self._post(StatsUpdated(source.stats()))
        self._post(WorkersLoaded(source.workers()))
        self._load_jobs(source)
        self._load_watch(source)

    def _load_jobs(self, source: Source) -> None:
        with self._lock:
            query = self._want_query
        try:
            page = source.list_jobs(query.state, search=query.search, limit=query.limit, offset=query.offset,
                                    sort=query.sort, descending=query.descending)
        except BrokerUnavailable:
            raise
        except CutqError as e:
            log.warning("list_jobs(%s) failed: %s", query, e)
            page = {"jobs": [], "total": 0}
        jobs = list(page.get("jobs") or [])
        self._page_ids = {j["job_id"] for j in jobs}
        full = len(jobs) >= query.limit
        self._page_floor = min((j.get("created") or 0.0) for j in jobs) if full and jobs else 0.0
        with self._lock:
            self._loaded_query = query
        self._post(JobsPage(query, jobs, int(page.get("total") or 0)))

    def _load_watch(self, source: Source) -> None:
        with self._lock:
            job_id = self._want_watch
        if job_id is not None:
            try:
                self._post(JobDetail(source.status(job_id)))
            except BrokerUnavailable:
                raise
            except CutqError as e:
                self._post(JobMissing(job_id, str(e)))
        with self._lock:
            self._loaded_watch = job_id


def broker_feed(endpoint: str, config: FeedConfig | None = None, *,
                context: zmq.Context | None = None) -> Feed:
    """A Feed that talks to the broker at `endpoint` through shared.client (a context it makes,
    it terms when the feed stops)."""
    ctx = context or zmq.Context()

    def connect(timeout: float) -> Source:
        return BrokerSource(endpoint, timeout=timeout, context=ctx)

    return Feed(connect, label=endpoint, config=config, on_stop=None if context is not None else ctx.term)
