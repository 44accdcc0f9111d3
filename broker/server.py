"""The broker: one ROUTER socket, one loop.

Each turn: read every waiting message, authorise it by its sender's key and hand
it to a handler (writes go into one SQLite transaction), purge silent workers,
dispatch to free slots, commit, and only then send replies, dispatches and events.
So nothing is acknowledged before it is durable.  A turn that fails to commit is
answered with errors and memory is rebuilt from the database; the broker's own
writes (dispatch, re-queues, workers' results) then pause with a growing back-off,
so a full disk does not spin the loop, while clients' requests, heartbeats and the
watchdog go on.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

import zmq
import zmq.auth

from broker import events
from broker.blobs import FileBlobStore
from broker.client_handlers import ClientHandlers
from broker.connections import BrokerSetupError, ConnectionWatch, bind_router
from broker.core import Core
from broker.datadir import prepare_data_dir
from broker.intake import Intake
from broker.keys import KeyRing, ZapHandler, curve_enabled
from broker.metrics import Metrics
from broker.outbox import Outbox
from broker.store import Store, StoreError, referenced_checker
from broker.webhooks import Webhooks, parse_allow
from broker.worker_handlers import WorkerHandlers
from shared import protocol as p
from shared.config import BrokerConfig
from shared.sdnotify import Notifier
from shared.security import is_local_endpoint

log = logging.getLogger("cutq.broker")
MAX_MESSAGES_PER_TURN = 2000
# a turn stops reading after this much work, commits and answers: ROUTER reads its peers in turn,
# so a status asked during a drain waits one short turn, not the results of every task in flight
TURN_BUDGET_S = 0.010
WRITE_BACKOFF_FIRST, WRITE_BACKOFF_MAX = 0.1, 5.0


class Broker:
    """The socket and the loop; state and handlers live in Core and the handler modules."""

    def __init__(
        self,
        config: BrokerConfig,
        *,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        for warning in prepare_data_dir(config.data_dir):
            log.warning("%s", warning)
        self.secure = curve_enabled(config.data_dir)
        if not self.secure and not is_local_endpoint(config.bind) and not config.insecure:
            raise BrokerSetupError(
                f"refusing to bind {config.bind} without CURVE keys: anyone who reaches it could submit, read "
                f"images or pose as a worker; run `cutq keys init`, or pass --insecure to accept that")
        blobs = FileBlobStore(config.data_dir / "blobs")
        db = config.data_dir / "cutq.db"
        try:
            store = Store(db, synchronous=config.synchronous, busy_timeout_ms=config.busy_timeout_ms, clock=wall,
                          legacy_blobs=blobs)
        except StoreError as e:
            raise BrokerSetupError(f"cannot open the queue in {config.data_dir}: {e}") from e
        self.core = Core(config, store, blobs, clock=clock, wall=wall)
        # blobs written before now that no row names were left by a crash between write and commit
        self.core.blobio.sweep(referenced_checker(db), older_than=time.time())
        self.core.blobio.referenced = referenced_checker(db)  # used under the blob lock only
        self.notifier = notifier or Notifier.from_env({})
        self._ctx = context or zmq.Context()
        self._own_ctx = context is None
        self.keyring = KeyRing(config.data_dir, clock) if self.secure else None
        # the ZAP handler must be bound before the CURVE socket binds
        self.zap = ZapHandler(self._ctx, self.keyring) if self.keyring else None
        self._keys_version = self.keyring.version if self.keyring else 0
        self.sock = bind_router(self._ctx, config, self.secure)
        self.connections = ConnectionWatch(self.sock, self.core.registry) if self.secure else None
        try:
            allow = parse_allow(config.webhook_allow)
        except ValueError as e:
            raise BrokerSetupError(f"--webhook-allow: {e}") from e
        self.webhooks = Webhooks(self.core, allow, config.public_url)
        self.clients = ClientHandlers(self.core, self.secure, self.webhooks)
        if config.metrics:
            self.core.metrics = Metrics()
            try:
                self.core.metrics.serve(config.metrics)
            except (OSError, ValueError) as e:
                raise BrokerSetupError(f"cannot serve metrics on {config.metrics}: {e}") from e
        self.intake = Intake(self.core, {**self.clients.table(), **WorkerHandlers(self.core).table()},
                             self.keyring, self.connections)
        self._stop = False
        self._next_heartbeat = self._next_stats = 0.0
        self._writes_resume_at = 0.0  # after a storage error: no writes before this (monotonic)
        self._write_backoff = 0.0
        self._redo: list[Callable[[], None]] = []  # writes of a rolled-back turn, to make again
        self._unreachable: dict[bytes, str] = {}  # workers a send failed to reach: judged next turn
        self._next_retention = self._next_maintenance = self._next_checkpoint = 0.0
        recovered = self.core.load()
        if recovered:
            log.info("re-queued %d tasks left running by the previous broker", recovered)

    # ------------------------------------------------------------------ setup

    @property
    def endpoint(self) -> str:
        return self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

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
        if self.connections is not None:
            poller.register(self.connections.monitor, zmq.POLLIN)
        poller.register(self.core.blobio.wake_fd, zmq.POLLIN)  # a blob write finished
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
        delayed = self.core.scheduler.next_wakeup()
        if delayed is not None:
            wake = min(wake, now + max(0.0, delayed - self.core.wall()))
        if self._redo or self.core.orphans or self.core.deferred:
            wake = min(wake, self._writes_resume_at)
        cap = 500
        if self.notifier.watchdog_interval:  # wake often enough to feed systemd's watchdog
            cap = min(cap, int(self.notifier.watchdog_interval * 250))
        return max(0, min(int((wake - now) * 1000) + 1, cap))

    def turn(self) -> None:
        """One pass: drain messages, timers, dispatch, commit, send."""
        core = self.core
        if self.zap:
            self.zap.handle()
        if self.keyring:
            self.keyring.refresh()
        now = self.clock()
        writable = now >= self._writes_resume_at  # may the broker start writes of its own?
        try:
            if self.connections is not None:
                # after zap.handle(): a connection that takes over a closed one's routing id
                # finished its handshake after that close was reported, so it is seen here first
                self.connections.poll_disconnects()
            if writable:
                self._write_again()
            core.blobio.run_finished()
            self._read_messages()
            self._lose_unreachable()
            if self.keyring and self.keyring.version != self._keys_version:
                self._drop_revoked()
                self._keys_version = self.keyring.version
            if writable:
                self._own_writes(now)
            changes = core.store.commit()
        except StoreError as e:  # disk full, read-only, locked: the turn never happened
            self._abort_turn(str(e))
        else:
            core.redoable.clear()
            core.blobio.turn_ended()
            core.blobio.delete(core.store.take_unreferenced())
            if core.trouble is not None:
                self._back_off(core.trouble)
                core.trouble = None
            elif writable and self._write_backoff:
                log.info("storage writes work again")
                self._write_backoff = 0.0
            out, core.out = core.out, Outbox()
            self._send_outbox(out)
            events.publish(core, changes, out.worker_events, self._send)
        self._timers(now)
        self.notifier.watchdog(now)

    def _lose_unreachable(self) -> None:
        """Workers a send could not reach last turn and that did not say goodbye since: gone."""
        unreachable, self._unreachable = self._unreachable, {}
        for ident, why in unreachable.items():
            w = self.core.registry.get_alive(ident)
            if w is not None:
                self.core.lose_worker(w, f"unreachable ({why})")

    def _write_again(self) -> None:
        """What a rolled-back turn or a failed blob write left to do."""
        self.core.requeue_orphans()
        redo, self._redo = self._redo + self.core.deferred, []
        self.core.deferred = []
        for again in redo:
            again()

    def _own_writes(self, now: float) -> None:
        """The broker's own moves: dead workers, due retries, dispatch, retention."""
        core = self.core
        core.purge_dead()
        core.scheduler.release_due(core.wall())
        core.dispatch()
        if now >= self._next_retention:
            self._next_retention = now + 1.0
            core.expire_step()
            self.webhooks.send_due()

    def _read_messages(self) -> None:
        deadline = self.clock() + TURN_BUDGET_S
        for _ in range(MAX_MESSAGES_PER_TURN):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self.core.drained_at = self.clock()
                return
            self.intake.handle(frames)
            if self.clock() >= deadline:
                return

    def _abort_turn(self, error: str) -> None:
        """The commit failed: nothing of this turn happened.  Answer, rebuild memory, back off."""
        core = self.core
        core.store.rollback()
        out, core.out = core.out, Outbox()
        self._back_off(f"turn rolled back: {error}")
        for ident, reply, read_only in out.replies:
            if reply.ok and not read_only:
                reply = p.Reply(req=reply.req, ok=False, error=f"storage error, nothing was saved: {error}",
                                code="storage")
            self._send(ident, p.encode(reply))
        # results of this turn were not stored: the workers will not send them again
        self._redo = core.redoable + self._redo
        core.redoable = []
        core.blobio.turn_ended()
        try:
            core.resync()
        except StoreError as e:  # cannot even read: the next turn tries again
            log.error("could not re-read the queue after a storage error: %s", e)

    def _back_off(self, error: str) -> None:
        """Pause the broker's own writes, longer each time in a row that storage fails."""
        self._write_backoff = min(max(WRITE_BACKOFF_FIRST, self._write_backoff * 2), WRITE_BACKOFF_MAX)
        self._writes_resume_at = self.clock() + self._write_backoff
        self.core.warnings.warn("storage", "storage error, writes paused %.1fs: %s", self._write_backoff, error,
                                level=logging.ERROR)

    # ------------------------------------------------------------------ sending

    def _send(self, ident: bytes, frames: list[bytes]) -> bool:
        try:
            self.sock.send_multipart([ident, *frames], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as e:  # EHOSTUNREACH (peer gone) or EAGAIN (peer's queue full)
            w = self.core.registry.get_alive(ident)
            if w is not None:
                # judged next turn, after reading what it sent before it went: a worker that
                # left cleanly has a GOODBYE waiting in the socket, and its tasks go back unspent
                w.draining = True
                self._unreachable[ident] = e.strerror
            return False

    def _send_outbox(self, out: Outbox) -> None:
        for ident, reply, _ in out.replies:
            self._send(ident, p.encode(reply))
        for ident, frames in out.frames:
            self._send(ident, frames)
        for worker, sending in out.dispatches:
            msg = p.Dispatch(tasks=[
                {"task_id": c.task_id, "attempt": c.attempt, "name": c.name, "processor": c.processor,
                 "options": c.options, "job_id": c.job_id}
                for c, _ in sending
            ])
            msg.blobs = [data for _, data in sending]  # type: ignore[misc]
            self._send(worker.ident, p.encode(msg))
        for ident, task_ids in out.cancels.items():
            self._send(ident, p.encode(p.CancelTasks(task_ids=task_ids)))

    # ------------------------------------------------------------------ timers and keys

    def _timers(self, now: float) -> None:
        """Heartbeats to workers and stats to subscribers: they change no state, so they go on
        even while the store refuses writes."""
        registry = self.core.registry
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.heartbeat_interval
            hb = p.encode(p.Heartbeat())
            for w in registry.alive():
                self._send(w.ident, hb)
            registry.forget_old(now)
            registry.drop_expired_subscribers(now)
        if now >= self._next_stats:
            self._next_stats = now + 1.0
            events.publish_stats(self.core, self._send)
        if now >= self._next_maintenance:
            self._next_maintenance = now + 1.0
            self._maintenance(now)

    def _maintenance(self, now: float) -> None:
        """Keep the files small: free pages back to the disk, the WAL truncated now and then,
        abandoned uploads dropped.  Outside any turn's transaction; a failure waits for next time."""
        self.clients.uploads.expire()
        try:
            if self.core.metrics is not None:
                self.core.metrics.refresh(self.core)
            self.core.store.vacuum_step()
            if now >= self._next_checkpoint:
                self._next_checkpoint = now + 30.0
                self.core.store.checkpoint()
        except StoreError as e:
            self.core.warnings.warn("maintenance", "storage maintenance failed: %s", e)

    def _drop_revoked(self) -> None:
        """The key registry changed: revoked workers lose their tasks, revoked clients their streams."""
        assert self.keyring is not None
        active = {e["name"] for e in self.keyring.entries() if not e.get("revoked")}
        self.core.drop_workers_of(lambda user: user not in active)
        subs = self.core.registry.subscribers
        for ident in [i for i, s in subs.items() if s.user not in active]:
            del subs[ident]

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Commit, checkpoint and close the store; close the sockets."""
        store = self.core.store
        try:
            store.commit()
        except StoreError as e:
            log.error("final commit failed: %s", e)
        try:
            store.close()
        except StoreError as e:
            log.error("could not checkpoint the queue on close: %s", e)
        if self.connections is not None:
            self.connections.close()
        self.webhooks.close()  # before the blob pool: its senders post back through it
        self.core.blobio.close()
        self.sock.close(linger=500)
        if self.zap:
            self.zap.close()
        if self._own_ctx:
            self._ctx.term()


def serve(config: BrokerConfig) -> int:
    """Run a broker until SIGTERM/SIGINT; the `cutq broker` command."""
    os.umask(0o077)  # whatever the broker writes later in its data dir is its own
    broker = Broker(config, notifier=Notifier.from_env(os.environ))
    signal.signal(signal.SIGTERM, broker.stop)
    signal.signal(signal.SIGINT, broker.stop)
    broker.run()
    log.info("broker stopped cleanly")
    return 0
