"""The broker: one ROUTER socket, one loop.

Each turn: read every waiting message, authorise it by its sender's key and
handle it (writes go into one SQLite transaction), purge silent workers, dispatch
to free slots, commit, and only then send replies, dispatches and events.  So
nothing is acknowledged before it is durable, and a turn that fails to commit
answers with errors instead.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sqlite3
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import asdict, dataclass, field
from typing import Callable

import zmq
import zmq.auth
import zmq.utils.monitor

from broker import access
from broker.keys import OPEN, KeyRing, Principal, ZapHandler, broker_cert_paths, curve_enabled
from broker.registry import Registry, Subscription, WorkerRecord
from broker.scheduler import Scheduler, TenantPolicy
from broker.store import Claimed, Store, StoreError
from shared import protocol as p
from shared.config import BrokerConfig
from shared.options import PROCESSORS, validate_options, warm_model_lookup
from shared.sdnotify import Notifier
from shared.security import is_local_endpoint
from shared.states import TASK_STATES

log = logging.getLogger("cutq.broker")
MAX_MESSAGES_PER_TURN = 2000


class BrokerSetupError(Exception):
    """The broker cannot start as configured (one line for the user)."""


@dataclass
class _Turn:
    """What one loop turn will send once its writes are committed."""

    replies: list[tuple[bytes, p.Reply]] = field(default_factory=list)
    frames: list[tuple[bytes, list[bytes]]] = field(default_factory=list)  # not state-bearing
    dispatches: list[tuple[WorkerRecord, list[Claimed]]] = field(default_factory=list)
    cancels: dict[bytes, list[int]] = field(default_factory=lambda: defaultdict(list))
    results_seen: list[tuple[int, int, bytes]] = field(default_factory=list)
    worker_events: list[dict] = field(default_factory=list)


class Broker:
    """The broker's state and handlers; `run()` is the loop."""

    def __init__(
        self,
        config: BrokerConfig,
        *,
        context: zmq.Context | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.clock, self.wall = clock, wall
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.secure = curve_enabled(config.data_dir)
        if not self.secure and not is_local_endpoint(config.bind) and not config.insecure:
            raise BrokerSetupError(
                f"refusing to bind {config.bind} without CURVE keys: anyone who reaches it could submit, read "
                f"images or pose as a worker; run `cutq keys init`, or pass --insecure to accept that")
        self.store = Store(
            config.data_dir / "cutq.db", synchronous=config.synchronous,
            busy_timeout_ms=config.busy_timeout_ms, clock=wall,
        )
        self.registry = Registry()
        self.scheduler = Scheduler()
        self.notifier = notifier or Notifier.from_env({})
        self._ctx = context or zmq.Context()
        self._own_ctx = context is None
        self.keyring = KeyRing(config.data_dir, clock) if self.secure else None
        # the ZAP handler must be bound before the CURVE socket binds
        self.zap = ZapHandler(self._ctx, self.keyring) if self.keyring else None
        self._keys_version = self.keyring.version if self.keyring else 0
        self.sock = self._make_socket()
        # with CURVE, another key can take a worker's routing id the moment the worker's
        # connection closes; watch connections close, so nothing more is sent to that id
        self._monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED) if self.secure else None
        self._worker_fds: dict[int, bytes] = {}  # connection fd -> routing id of the worker last heard on it
        self._disconnected: set[bytes] = set()  # workers whose connection closed: no dispatch until heard again
        self._stop = False
        self._turn = _Turn()
        self._handlers: dict[type, Callable] = {
            p.Submit: self._on_submit, p.Status: self._on_status, p.ListJobs: self._on_list,
            p.Stats: self._on_stats, p.Workers: self._on_workers, p.Cancel: self._on_cancel,
            p.Retry: self._on_retry, p.Fetch: self._on_fetch, p.Subscribe: self._on_subscribe,
            p.Unsubscribe: self._on_unsubscribe, p.Pause: self._on_pause, p.Tenants: self._on_tenants,
            p.TenantSet: self._on_tenant_set, p.Ready: self._on_ready, p.Heartbeat: self._on_heartbeat,
            p.Results: self._on_results, p.Progress: self._on_progress, p.Goodbye: self._on_goodbye,
        }
        self.malformed = 0
        self.refused = 0
        self._completions: deque[tuple[int, int, int]] = deque(maxlen=600)  # (second, tasks, images)
        self._tenant_done: dict[str, deque[tuple[int, int]]] = defaultdict(lambda: deque(maxlen=120))
        self._running_tenant: dict[int, str] = {}  # task_id -> tenant, for running tasks
        self._next_heartbeat = 0.0
        self._next_stats = 0.0
        # an unknown model name makes validation import rembg (a second): do it now, off the loop
        threading.Thread(target=warm_model_lookup, daemon=True, name="warm-rembg").start()
        recovered = self.store.recover()
        self._load_policies()
        self._load_queue()
        if recovered:
            log.info("re-queued %d tasks left running by the previous broker", recovered)

    # ------------------------------------------------------------------ setup

    def _make_socket(self) -> zmq.Socket:
        s = self._ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 1000)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a departed peer raises, never drops silently
        # a reconnecting worker keeps its identity; with CURVE, nobody may take over another's
        s.setsockopt(zmq.ROUTER_HANDOVER, 0 if self.secure else 1)
        s.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        s.setsockopt(zmq.SNDHWM, self.config.sndhwm)
        s.setsockopt(zmq.RCVHWM, self.config.rcvhwm)
        # ZMTP heartbeats drop dead TCP connections, so a worker's identity frees up after a cut
        s.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
        if self.secure:
            public, secret = zmq.auth.load_certificate(broker_cert_paths(self.config.data_dir)[1])
            s.curve_secretkey, s.curve_publickey = secret, public
            s.curve_server = True
        elif not is_local_endpoint(self.config.bind):
            log.warning("binding %s WITHOUT CURVE (--insecure): traffic is plaintext and unauthenticated",
                        self.config.bind)
        try:
            s.bind(self.config.bind)
        except zmq.ZMQError as e:
            s.close(0)
            raise BrokerSetupError(f"cannot bind {self.config.bind}: {e.strerror}") from e
        return s

    @property
    def endpoint(self) -> str:
        return self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def _load_queue(self) -> None:
        self.scheduler = Scheduler(self.scheduler.policies)
        now = self.wall()
        for t in self.store.queued_tasks():
            self.scheduler.push(t.task_id, t.tenant, t.priority, t.not_before, now)
        flags = self.store.meta_items("paused:")
        self.scheduler.paused_all = flags.get("paused:*") == "1"
        self.scheduler.paused = {k.split(":", 1)[1] for k, v in flags.items() if v == "1" and k != "paused:*"}

    def _load_policies(self) -> None:
        for key, value in self.store.meta_items("tenant:").items():
            self.scheduler.policies[key.split(":", 1)[1]] = TenantPolicy(**json.loads(value))

    # ------------------------------------------------------------------ loop

    def stop(self, *_: object) -> None:
        """Ask the loop to finish its turn and exit (safe from a signal handler)."""
        self._stop = True

    def run(self) -> None:
        """Serve until stop(): the broker's one loop."""
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        if self.zap:
            poller.register(self.zap.sock, zmq.POLLIN)
        if self._monitor is not None:
            poller.register(self._monitor, zmq.POLLIN)
        self.notifier.ready()
        log.info("broker serving on %s (%s), data in %s", self.endpoint,
                 "CURVE" if self.secure else "no encryption", self.config.data_dir)
        try:
            while not self._stop:
                poller.poll(self._poll_timeout_ms())
                self.turn()
        finally:
            self.notifier.stopping()
            self.close()

    def _poll_timeout_ms(self) -> int:
        now = self.clock()
        wake = min(self._next_heartbeat, self._next_stats)
        delayed = self.scheduler.next_wakeup()
        if delayed is not None:
            wake = min(wake, now + max(0.0, delayed - self.wall()))
        cap = 500
        if self.notifier.watchdog_interval:  # wake often enough to feed systemd's watchdog
            cap = min(cap, int(self.notifier.watchdog_interval * 250))
        return max(0, min(int((wake - now) * 1000) + 1, cap))

    def turn(self) -> None:
        """One pass: drain messages, timers, dispatch, commit, send."""
        if self.zap:
            self.zap.handle()
        if self.keyring:
            self.keyring.refresh()
        now = self.clock()
        try:
            # after zap.handle(): a connection that takes over a closed one's routing id
            # finished its handshake after that close was reported, so it is seen here first
            self._watch_disconnects()
            for _ in range(MAX_MESSAGES_PER_TURN):
                try:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=not self.secure)
                except zmq.Again:
                    break
                self._handle(frames)
            if self.keyring and self.keyring.version != self._keys_version:
                self._drop_revoked_workers()
                self._keys_version = self.keyring.version
            self._purge_dead(now)
            self.scheduler.release_due(self.wall())
            self._dispatch()
            changes = self.store.commit()
        except (StoreError, sqlite3.Error) as e:  # disk full, read-only, locked: the turn never happened
            log.error("storage error, turn rolled back: %s", e)
            self.store.rollback()
            self._abort_turn(str(e))
            return
        turn, self._turn = self._turn, _Turn()
        self._send_turn(turn, changes)
        self._timers(now)
        self.notifier.watchdog(now)

    def _principal(self, frames: list) -> Principal | None:
        """Who sent these frames: by the key ZAP authenticated (User-Id), never by routing id."""
        if not self.secure:
            return OPEN
        try:
            user = frames[1].get("User-Id")
        except (IndexError, zmq.ZMQError, AttributeError):
            return None
        return self.keyring.lookup(user) if user else None

    def _handle(self, frames: list) -> None:
        if len(frames) < 2:
            self._malformed(b"?", "no envelope")
            return
        who = self._principal(frames)
        srcfd = None
        if self.secure:
            srcfd = frames[1].get(zmq.SRCFD)
            frames = [f.bytes for f in frames]
        ident, body = frames[0], frames[1:]
        if who is None:
            # a revoked key's connection stays open at the ZeroMQ level: refuse each message
            self.refused += 1
            try:  # answer the request itself, so the client reports the refusal, not a timeout
                req = getattr(p.decode(body), "req", 0)
            except p.ProtocolError:
                req = 0
            self._turn.replies.append((ident, p.Reply(req=req, ok=False, error="key unknown or revoked", code="unauthorized")))
            return
        try:
            msg = p.decode(body)
        except p.ProtocolError as e:
            self._malformed(ident, str(e))
            self._turn.replies.append((ident, p.Reply(req=0, ok=False, error=f"bad message: {e}", code="bad_request")))
            return
        handler = self._handlers.get(type(msg))
        if handler is None:
            self._malformed(ident, f"{type(msg).__name__} is not sent to a broker")
            return
        why = access.refusal(who, msg, self.secure)
        if why is not None:
            self.refused += 1
            log.warning("refused %s from %s (%s): %s", type(msg).__name__, who.name, who.role, why)
            if hasattr(msg, "req"):
                self._reply_error(ident, msg, why, "forbidden")
            return
        if srcfd is not None and type(msg) in p.WORKER_MESSAGES:
            self._heard_worker_on(srcfd, ident, who)
        try:
            handler(ident, msg, who)
            if srcfd is not None and isinstance(msg, p.Ready):
                self._heard_worker_on(srcfd, ident, who)
        except (StoreError, sqlite3.Error) as e:
            if hasattr(msg, "req"):
                self._reply_error(ident, msg, f"storage error, nothing was saved: {e}", "storage")
            raise  # the whole turn is rolled back and answered with errors
        except Exception as e:  # a bug in one handler must not take the broker down
            log.exception("handler for %s failed", type(msg).__name__)
            if hasattr(msg, "req"):
                self._reply_error(ident, msg, f"internal error: {e.__class__.__name__}: {e}", "internal")

    def _malformed(self, ident: bytes, why: str) -> None:
        self.malformed += 1
        if self.malformed <= 20 or self.malformed % 1000 == 0:
            log.warning("dropped malformed message #%d from %r: %s", self.malformed, ident[:16], why)

    def _abort_turn(self, error: str) -> None:
        """The commit failed: nothing of this turn happened; answer with errors, rebuild memory."""
        turn, self._turn = self._turn, _Turn()
        for ident, reply in turn.replies:
            if reply.ok:
                reply = p.Reply(req=reply.req, ok=False, error=f"storage error, nothing was saved: {error}",
                                code="storage")
            self._send(ident, p.encode(reply))
        for worker, claims in turn.dispatches:
            for c in claims:
                self._release(worker, c.task_id)
        for task_id, attempt, ident in turn.results_seen:
            # the result was rolled back: the worker no longer has it, so hand it back for free
            self.store.hand_back(task_id, attempt, ident.decode(errors="replace"))
        try:
            self.store.commit()
        except StoreError:
            self.store.rollback()
        self._load_queue()

    def _send(self, ident: bytes, frames: list[bytes]) -> bool:
        try:
            self.sock.send_multipart([ident, *frames], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as e:  # EHOSTUNREACH (peer gone) or EAGAIN (peer's queue full)
            w = self.registry.get_alive(ident)
            if w is not None:
                self._lose_worker(w, f"unreachable ({e.strerror})")
            return False

    def _send_turn(self, turn: _Turn, changes) -> None:
        for ident, reply in turn.replies:
            self._send(ident, p.encode(reply))
        for ident, frames in turn.frames:
            self._send(ident, frames)
        for worker, claims in turn.dispatches:
            msg = p.Dispatch(tasks=[
                {"task_id": c.task_id, "attempt": c.attempt, "name": c.name, "processor": c.processor,
                 "options": c.options, "job_id": c.job_id}
                for c in claims
            ])
            msg.blobs = [c.data for c in claims]
            self._send(worker.ident, p.encode(msg))
        for ident, task_ids in turn.cancels.items():
            self._send(ident, p.encode(p.CancelTasks(task_ids=task_ids)))
        self._publish(changes, turn.worker_events)

    # ------------------------------------------------------------------ timers

    def _timers(self, now: float) -> None:
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.heartbeat_interval
            hb = p.encode(p.Heartbeat())
            for w in self.registry.alive():
                self._send(w.ident, hb)
            self.registry.forget_old(now)
            self.registry.drop_expired_subscribers(now)
        if now >= self._next_stats:
            self._next_stats = now + 1.0
            stats_for: dict[str | None, list[bytes]] = {}
            for ident, sub in list(self.registry.subscribers.items()):
                if sub.job_id is None:
                    if sub.tenant not in stats_for:
                        who = Principal("subscriber", "client", sub.tenant) if sub.tenant else OPEN
                        stats_for[sub.tenant] = p.encode(p.Events(events=[{"kind": "stats", "t": self.wall(),
                                                                           **self._stats(who)}]))
                    self._send(ident, stats_for[sub.tenant])

    def _watch_disconnects(self) -> None:
        """A worker whose connection closed takes nothing new until its own key is heard again."""
        if self._monitor is None:
            return
        while True:
            try:
                frames = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                event = zmq.utils.monitor.parse_monitor_message(frames)
            except Exception:  # not ours to crash on
                continue
            ident = self._worker_fds.pop(event["value"], None)
            w = self.registry.get_alive(ident) if ident is not None else None
            if w is not None and not w.draining:
                # its routing id may be someone else's by now: dispatch nothing more to it until
                # its own key speaks on a new connection; else the heartbeat timeout re-queues its tasks
                log.warning("worker %s's connection closed; no dispatch to it until it is heard again", w.name)
                w.draining = True
                self._disconnected.add(w.ident)

    def _heard_worker_on(self, fd: int, ident: bytes, who: Principal) -> None:
        """Note the connection a worker's own key spoke on; a worker cut off by a closed connection is back."""
        w = self.registry.get_alive(ident)
        if w is None or w.user != who.name:
            return
        self._worker_fds[fd] = ident
        if ident in self._disconnected:
            self._disconnected.discard(ident)
            w.draining = False
            log.info("worker %s is back on a new connection", w.name)

    def _drop_revoked_workers(self) -> None:
        """A worker whose key was revoked gets nothing more; what it holds goes back to the queue."""
        active = {e["name"] for e in self.keyring.entries() if not e.get("revoked")}
        for w in self.registry.alive():
            if w.user not in active:
                self._lose_worker(w, f"its key {w.user!r} was revoked")

    def _purge_dead(self, now: float) -> None:
        timeout = self.config.heartbeat_interval * self.config.heartbeat_liveness
        for w in self.registry.expired(now, timeout):
            self._lose_worker(w, f"no heartbeat for {now - w.last_seen:.1f}s")

    def _release(self, w: WorkerRecord, task_id: int) -> str | None:
        """The task no longer runs on `w`; returns its tenant."""
        w.running.pop(task_id, None)
        return self._running_tenant.pop(task_id, None)

    def _lose_worker(self, w: WorkerRecord, reason: str, state: str = "dead") -> None:
        """Declare a worker gone: its tasks go back to the queue (or quarantine)."""
        if w.running or state == "dead":
            log.warning("worker %s (%s pid %d) %s: %s; re-queueing %d tasks",
                        w.name, w.host, w.pid, state, reason, len(w.running))
        w.state = state
        for task_id, attempt in list(w.running.items()):
            self._release(w, task_id)
            new = self.store.requeue_lost(task_id, attempt, w.ident.decode(errors="replace"),
                                          f"worker {w.name} lost: {reason}", self.config.max_worker_deaths)
            if new == "queued":
                self._requeue_in_memory(task_id)
        self._turn.worker_events.append({"kind": "worker", "worker": w.name, "state": state, "reason": reason})

    def _requeue_in_memory(self, task_id: int, not_before: float = 0.0) -> None:
        job_id = self.store.task_job(task_id)
        job = self.store.job(job_id) if job_id else None
        if job is not None:
            self.scheduler.push(task_id, job["tenant"], job["priority"], not_before, self.wall())

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self) -> None:
        if not self.scheduler.ready():
            return
        workers = sorted((w for w in self.registry.alive() if w.free > 0), key=lambda w: -w.free)
        now = self.clock()
        while workers and self.scheduler.ready():
            progressed = False
            running = Counter(self._running_tenant.values())
            for w in workers:
                want = min(w.free, self.config.dispatch_batch)
                if want <= 0:
                    continue
                picked = self.scheduler.pop(want, now, running)
                if not picked:
                    break
                tenant_of = dict(picked)
                claims = self.store.claim([tid for tid, _ in picked], w.ident.decode(errors="replace"))
                for c in claims:
                    w.running[c.task_id] = c.attempt
                    self._running_tenant[c.task_id] = tenant_of[c.task_id]
                    running[tenant_of[c.task_id]] += 1
                if claims:
                    self._turn.dispatches.append((w, claims))
                    progressed = True
            workers = [w for w in workers if w.free > 0]
            if not progressed:
                break

    # ------------------------------------------------------------------ client handlers

    def _reply(self, ident: bytes, msg: p.Message, **data: object) -> None:
        self._turn.replies.append((ident, p.Reply(req=msg.req, ok=True, data=data)))  # type: ignore[attr-defined]

    def _reply_error(self, ident: bytes, msg: p.Message, error: str, code: str) -> None:
        self._turn.replies.append((ident, p.Reply(req=msg.req, ok=False, error=error, code=code)))  # type: ignore[attr-defined]

    def _on_submit(self, ident: bytes, msg: p.Submit, who: Principal) -> None:
        n = len(msg.names)
        if n == 0 or n != len(msg.blobs):
            return self._reply_error(ident, msg, f"a job needs one image per name (got {n} names, {len(msg.blobs)} images)", "bad_request")
        if n > self.config.max_tasks_per_submit:
            return self._reply_error(ident, msg, f"too many images in one submission: {n} > {self.config.max_tasks_per_submit}", "bad_request")
        if msg.processor not in PROCESSORS:
            return self._reply_error(ident, msg, f"unknown processor {msg.processor!r} (one of: {', '.join(PROCESSORS)})", "bad_request")
        try:
            options = validate_options(msg.processor, msg.options)
        except ValueError as e:
            return self._reply_error(ident, msg, str(e), "bad_request")
        depth = self.store.depth
        if depth + n > self.config.max_queued_tasks:
            retry_after = self._eta(depth + n - self.config.max_queued_tasks) or 5.0
            return self._reply_error(
                ident, msg,
                f"queue full: {depth} tasks queued, limit {self.config.max_queued_tasks}; retry after ~{retry_after:.0f}s",
                "queue_full",
            )
        tenant = access.submit_tenant(who, msg.tenant, self.secure)
        cap = self.scheduler.policy(tenant).max_queued
        if cap:
            queued = self.store.tenant_queued(tenant)
            if queued + n > cap:
                return self._reply_error(
                    ident, msg, f"quota: tenant {tenant} has {queued} tasks queued, limit {cap}; "
                    f"this submission of {n} would exceed it", "quota")
        job_id, tasks = self.store.add_job(
            names=msg.names, blobs=msg.blobs, processor=msg.processor, options=options,
            tenant=tenant, priority=msg.priority,
        )
        for t in tasks:
            self.scheduler.push(t.task_id, t.tenant, t.priority)
        self._reply(ident, msg, job_id=job_id, tasks=[t.task_id for t in tasks])

    def _job_or_error(self, ident: bytes, msg: p.Message, job_id: str, who: Principal) -> dict | None:
        job = self.store.job(job_id)
        if job is None or not access.can_see(who, job["tenant"]):
            self._reply_error(ident, msg, f"job {job_id} not found", "not_found")
            return None
        return job

    def _on_status(self, ident: bytes, msg: p.Status, who: Principal) -> None:
        job = self._job_or_error(ident, msg, msg.job_id, who)
        if job is None:
            return
        if msg.tasks:
            job["tasks"] = self.store.job_tasks(msg.job_id)
            for t in job["tasks"]:
                if t["state"] == "failed" or t["worker_deaths"] or t["failures"]:
                    t["history"] = self.store.task_attempts(t["task_id"])
        job["position"], job["eta_s"] = None, None
        if job["queued"]:
            ahead = self.store.queue_position(msg.job_id)
            job["position"] = ahead
            tps = self._tenant_rate(job["tenant"])
            job["eta_s"] = (ahead + job["queued"]) / tps if tps > 0 else None
        self._reply(ident, msg, **job)

    def _tenant_rate(self, tenant: str) -> float:
        """Tasks/s this tenant can expect: its measured share, else an equal share of the whole."""
        horizon = int(self.clock()) - 60
        done = sum(c for s, c in self._tenant_done.get(tenant, ()) if s >= horizon)
        if done:
            return done / 60.0
        total = sum(t for s, t, _ in self._completions if s >= horizon) / 60.0
        active = max(1, len(self.store.counts_by_tenant(active_only=True)))
        return total / active

    def _on_list(self, ident: bytes, msg: p.ListJobs, who: Principal) -> None:
        if msg.state is not None and msg.state not in TASK_STATES:
            return self._reply_error(ident, msg, f"unknown state {msg.state!r} (one of: {', '.join(TASK_STATES)})", "bad_request")
        jobs, total = self.store.list_jobs(msg.state, msg.search, max(1, min(msg.limit, 1000)), max(0, msg.offset),
                                           tenant=access.scope(who))
        self._reply(ident, msg, jobs=jobs, total=total)

    def _stats(self, who: Principal) -> dict:
        by_tenant = self.store.counts_by_tenant()
        tenant = access.scope(who)
        if tenant is None:
            counts = self.store.counts()
        else:
            by_tenant = {tenant: by_tenant.get(tenant, dict.fromkeys(TASK_STATES, 0))}
            counts = {"jobs": None, **by_tenant[tenant]}
        now_s = int(self.clock())
        per_second = {s: (t, i) for s, t, i in self._completions}
        history = [per_second.get(s, (0, 0))[0] for s in range(now_s - 120, now_s)]
        recent = [per_second.get(s, (0, 0)) for s in range(now_s - 10, now_s)]
        tps = sum(t for t, _ in recent) / 10.0
        ips = sum(i for _, i in recent) / 10.0
        alive = self.registry.alive()
        return {
            **counts, "queue_depth": counts["queued"], "tasks_per_s": tps, "images_per_s": ips,
            "history": history, "workers_total": len(alive),
            "workers_busy": sum(1 for w in alive if w.running),
            "slots_total": sum(w.slots for w in alive), "slots_used": sum(len(w.running) for w in alive),
            "paused": self.scheduler.paused_all, "paused_tenants": sorted(self.scheduler.paused),
            "eta_s": (counts["queued"] / tps) if tps > 0 else None,
            "by_tenant": by_tenant,
        }

    def _eta(self, n: int) -> float | None:
        recent = [t for s, t, _ in self._completions if s >= int(self.clock()) - 10]
        tps = sum(recent) / 10.0
        return n / tps if tps > 0 else None

    def _on_stats(self, ident: bytes, msg: p.Stats, who: Principal) -> None:
        self._reply(ident, msg, **self._stats(who))

    def _on_workers(self, ident: bytes, msg: p.Workers, who: Principal) -> None:
        now, wall = self.clock(), self.wall()
        self._reply(ident, msg, workers=[w.public(now, wall) for w in self.registry.workers.values()])

    def _on_cancel(self, ident: bytes, msg: p.Cancel, who: Principal) -> None:
        if self._job_or_error(ident, msg, msg.job_id, who) is None:
            return
        cancelled = self.store.cancel(msg.job_id, msg.task_ids)
        for task_id, _attempt, worker, old in cancelled:
            if old != "running" or worker is None:
                continue
            w = self.registry.get_alive(worker.encode())
            if w is not None and task_id in w.running:
                self._release(w, task_id)
                self._turn.cancels[w.ident].append(task_id)
        self._reply(ident, msg, cancelled=len(cancelled))

    def _on_retry(self, ident: bytes, msg: p.Retry, who: Principal) -> None:
        if self._job_or_error(ident, msg, msg.job_id, who) is None:
            return
        requeued = self.store.retry(msg.job_id, msg.task_ids)
        for t in requeued:
            self.scheduler.push(t.task_id, t.tenant, t.priority)
        self._reply(ident, msg, requeued=len(requeued))

    def _on_fetch(self, ident: bytes, msg: p.Fetch, who: Principal) -> None:
        if msg.what not in ("result", "input"):
            return self._reply_error(ident, msg, f"can fetch 'result' or 'input', not {msg.what!r}", "bad_request")
        found = self.store.blob(msg.task_id, msg.what)
        if found is None or not access.can_see(who, found[0]["tenant"]):
            return self._reply_error(ident, msg, f"task {msg.task_id} has no {msg.what}", "not_found")
        meta, data = found
        reply = p.Reply(req=msg.req, ok=True, data=meta)
        reply.blobs = [data]
        self._turn.replies.append((ident, reply))

    def _on_subscribe(self, ident: bytes, msg: p.Subscribe, who: Principal) -> None:
        if msg.job_id is not None and self._job_or_error(ident, msg, msg.job_id, who) is None:
            return
        ttl = max(1.0, min(msg.ttl, 300.0))
        self.registry.subscribers[ident] = Subscription(msg.job_id, self.clock() + ttl, access.scope(who))
        self._reply(ident, msg, ttl=ttl)

    def _on_unsubscribe(self, ident: bytes, msg: p.Unsubscribe, who: Principal) -> None:
        self.registry.subscribers.pop(ident, None)
        self._reply(ident, msg)

    def _on_pause(self, ident: bytes, msg: p.Pause, who: Principal) -> None:
        key = "paused:*" if msg.tenant is None else f"paused:{msg.tenant}"
        self.store.set_meta(key, "1" if msg.paused else "0")
        if msg.tenant is None:
            self.scheduler.paused_all = msg.paused
        elif msg.paused:
            self.scheduler.paused.add(msg.tenant)
        else:
            self.scheduler.paused.discard(msg.tenant)
        self._reply(ident, msg, paused=msg.paused, tenant=msg.tenant)

    def _on_tenants(self, ident: bytes, msg: p.Tenants, who: Principal) -> None:
        counts = self.store.counts_by_tenant()
        names = sorted(set(counts) | set(self.scheduler.policies))
        scope = access.scope(who)
        tenants = [
            {"tenant": t, **asdict(self.scheduler.policy(t)), **counts.get(t, dict.fromkeys(TASK_STATES, 0)),
             "paused": t in self.scheduler.paused, "running_now": sum(1 for v in self._running_tenant.values() if v == t),
             "tasks_per_s": self._tenant_rate(t) if counts.get(t, {}).get("queued") else 0.0}
            for t in names if scope is None or t == scope
        ]
        self._reply(ident, msg, tenants=tenants)

    def _on_tenant_set(self, ident: bytes, msg: p.TenantSet, who: Principal) -> None:
        fields = {"weight": float, "max_running": int, "rate": float, "max_queued": int}
        current = asdict(self.scheduler.policy(msg.tenant))
        for key, value in msg.policy.items():
            if key not in fields:
                return self._reply_error(ident, msg, f"unknown policy field {key!r} (one of: {', '.join(fields)})", "bad_request")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (key == "weight" and value <= 0):
                return self._reply_error(ident, msg, f"{key} must be a positive number, got {value!r}", "bad_request")
            current[key] = fields[key](value)
        policy = TenantPolicy(**current)
        self.store.set_meta(f"tenant:{msg.tenant}", json.dumps(asdict(policy)))
        self.scheduler.policies[msg.tenant] = policy
        self._reply(ident, msg, tenant=msg.tenant, **asdict(policy))

    # ------------------------------------------------------------------ worker handlers

    def _on_ready(self, ident: bytes, msg: p.Ready, who: Principal) -> None:
        now = self.clock()
        old = self.registry.workers.get(ident)
        reported = {pair[0]: pair[1] for pair in msg.running if len(pair) == 2}
        carried: dict[int, int] = {}
        if old is not None and old.state == "alive":
            if old.user != who.name:
                log.warning("key %s tried to take over worker %s's identity: ignored", who.name, old.name)
                return
            # the same worker announcing again (it reconnected): what it still holds stays
            # its own; what it never got was lost on the old connection, not by its fault
            worker_id = ident.decode(errors="replace")
            for task_id, attempt in list(old.running.items()):
                if reported.get(task_id) == attempt:
                    carried[task_id] = attempt
                    old.running.pop(task_id)
                else:
                    self._release(old, task_id)
                    if self.store.hand_back(task_id, attempt, worker_id):
                        self._requeue_in_memory(task_id)
            old.state = "left"
        w = WorkerRecord(
            ident=ident, name=msg.name or ident.decode(errors="replace"), host=msg.host, pid=msg.pid,
            slots=max(0, msg.slots), models=msg.models, providers=msg.providers, processors=msg.processors,
            joined=now, last_seen=now, user=who.name,
        )
        self.registry.workers[ident] = w
        w.running.update(carried)
        for task_id, attempt in reported.items():
            if task_id in carried:
                continue
            if self.store.adopt(task_id, attempt, ident.decode(errors="replace")):
                w.running[task_id] = attempt
                job = self.store.job(self.store.task_job(task_id) or "")
                self._running_tenant[task_id] = job["tenant"] if job else "default"
            else:
                self._turn.cancels[ident].append(task_id)  # superseded: stop it, don't return it
        log.info("worker %s joined from %s pid %d with %d slots", w.name, w.host, w.pid, w.slots)
        self._turn.worker_events.append({"kind": "worker", "worker": w.name, "state": "joined"})

    def _worker_or_disconnect(self, ident: bytes, who: Principal) -> WorkerRecord | None:
        w = self.registry.get_alive(ident)
        if w is None:
            self._turn.frames.append((ident, p.encode(p.Disconnect(reason="unknown worker: announce again"))))
            return None
        if w.user != who.name:
            log.warning("key %s sent on worker %s's identity: ignored", who.name, w.name)
            return None
        w.last_seen = self.clock()
        return w

    def _on_heartbeat(self, ident: bytes, msg: p.Heartbeat, who: Principal) -> None:
        w = self._worker_or_disconnect(ident, who)
        if w is not None and msg.draining:
            w.draining = True

    def _on_progress(self, ident: bytes, msg: p.Progress, who: Principal) -> None:
        w = self._worker_or_disconnect(ident, who)
        if w is None or w.running.get(msg.task_id) != msg.attempt:
            return
        job_id = self.store.task_job(msg.task_id)
        event = {"kind": "progress", "job_id": job_id, "task_id": msg.task_id, "stage": msg.stage,
                 "fraction": msg.fraction, "worker": w.name, "t": self.wall()}
        self._turn.worker_events.append(event)

    def _on_results(self, ident: bytes, msg: p.Results, who: Principal) -> None:
        w = self._worker_or_disconnect(ident, who)
        if w is None:
            return  # results of a worker we declared dead are discarded; its tasks were re-queued
        blobs = iter(msg.blobs)
        worker_id = ident.decode(errors="replace")
        now_s = int(self.clock())
        done = images = 0
        for r in msg.results:
            task_id, attempt, ok = r.get("task_id"), r.get("attempt"), bool(r.get("ok"))
            data = next(blobs, None) if ok else None
            if not isinstance(task_id, int) or not isinstance(attempt, int) or (ok and data is None):
                self._malformed(ident, "result without task_id/attempt/data")
                continue
            if w.running.get(task_id) != attempt:
                continue  # cancelled or superseded meanwhile: the late result is dropped
            tenant = self._release(w, task_id)
            w.finished_at.append(self.clock())
            self._turn.results_seen.append((task_id, attempt, ident))
            if ok:
                if self.store.complete(task_id, attempt, worker_id, data, str(r.get("ext") or "png")):
                    w.done += 1
                    done += 1
                    images += r.get("processor") == "rembg"
                    _bump(self._tenant_done[tenant or "default"], now_s)
                continue
            w.failed += 1
            self._record_failure(task_id, attempt, worker_id, str(r.get("error") or "unknown error"),
                                 str(r.get("error_kind") or "transient"))
        if done:
            if self._completions and self._completions[-1][0] == now_s:
                _, t, i = self._completions.pop()
                self._completions.append((now_s, t + done, i + images))
            else:
                self._completions.append((now_s, done, images))

    def _record_failure(self, task_id: int, attempt: int, worker_id: str, error: str, kind: str) -> None:
        retry_at = None
        if kind != "input":
            failures = self.store.task_failures(task_id)
            if failures + 1 < self.config.max_attempts:
                delay = min(self.config.retry_backoff * (2 ** failures), self.config.retry_backoff_max)
                retry_at = self.wall() + delay * random.uniform(0.5, 1.5)
                error = f"{error} (attempt {failures + 1} of {self.config.max_attempts}, retrying)"
            else:
                error = f"{error} (gave up after {failures + 1} attempts)"
        state = self.store.fail(task_id, attempt, worker_id, error, retry_at=retry_at)
        if state == "queued":
            self._requeue_in_memory(task_id, retry_at or 0.0)

    def _on_goodbye(self, ident: bytes, msg: p.Goodbye, who: Principal) -> None:
        w = self.registry.get_alive(ident)
        if w is None or w.user != who.name:
            return
        worker_id = ident.decode(errors="replace")
        for pair in msg.returned:
            if len(pair) == 2 and w.running.get(pair[0]) == pair[1]:
                self._release(w, pair[0])
                if self.store.hand_back(pair[0], pair[1], worker_id):
                    self._requeue_in_memory(pair[0])
        # a leaving worker lists everything it holds; what else is dispatched to it was still on
        # the wire when it left: not its death nor the task's fault, so back to the queue unspent
        for task_id, attempt in list(w.running.items()):
            self._release(w, task_id)
            if self.store.hand_back(task_id, attempt, worker_id):
                self._requeue_in_memory(task_id)
        self._lose_worker(w, "left", state="left")

    # ------------------------------------------------------------------ events

    def _publish(self, changes, worker_events: list[dict]) -> None:
        if not self.registry.subscribers:
            return
        now = self.wall()
        by_job: dict[str, list[dict]] = defaultdict(list)
        for c in changes:
            by_job[c.job_id].append({"kind": "task", "job_id": c.job_id, "task_id": c.task_id, "state": c.state,
                                     "worker": c.worker, "error": c.error, "attempt": c.attempt, "t": now})
        for e in worker_events:
            e.setdefault("t", now)
            if e.get("job_id"):
                by_job[e["job_id"]].append(e)
        tenant_of: dict[str, str] = {}
        for job_id in list(by_job):
            job = self.store.job(job_id)
            if job is not None:
                job.pop("options", None)
                tenant_of[job_id] = job["tenant"]
                by_job[job_id].append({"kind": "job", "t": now, **job})
        globals_ = [e for e in worker_events if not e.get("job_id")]
        for ident, sub in list(self.registry.subscribers.items()):
            if sub.job_id is not None:
                events = by_job.get(sub.job_id, [])
            else:
                events = [e for job_id, evs in by_job.items()
                          if sub.tenant is None or tenant_of.get(job_id) == sub.tenant for e in evs]
                if sub.tenant is None:
                    events += globals_
            if events:
                self._send(ident, p.encode(p.Events(events=events)))

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Commit, checkpoint and close the store; close the sockets."""
        try:
            self.store.commit()
        except StoreError as e:
            log.error("final commit failed: %s", e)
        self.store.close()
        if self._monitor is not None:
            self.sock.disable_monitor()
            self._monitor.close(0)
        self.sock.close(linger=500)
        if self.zap:
            self.zap.close()
        if self._own_ctx:
            self._ctx.term()


def _bump(series: deque, second: int) -> None:
    if series and series[-1][0] == second:
        series[-1] = (second, series[-1][1] + 1)
    else:
        series.append((second, 1))


def serve(config: BrokerConfig) -> int:
    """Run a broker until SIGTERM/SIGINT; the `cutq broker` command."""
    broker = Broker(config, notifier=Notifier.from_env(os.environ))
    signal.signal(signal.SIGTERM, broker.stop)
    signal.signal(signal.SIGINT, broker.stop)
    broker.run()
    log.info("broker stopped cleanly")
    return 0
