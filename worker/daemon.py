"""The worker daemon: a DEALER session with the broker, and slots that do the work.

Paranoid Pirate style: heartbeats both ways, a liveness counter, reconnect with
doubling backoff and jitter, re-announce (with the tasks still held) after a
broker restart.  rembg/sleep tasks run in slot processes (worker/slots.py); noop
tasks are answered inline, since they do no work to keep off this thread.
SIGTERM drains: no new tasks, finish or hand back within the drain timeout, exit 0.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import replace

import zmq

from shared import protocol as p
from shared.config import DEFAULT_MODEL, WorkerConfig
from shared.sdnotify import Notifier
from shared.security import Credentials
from worker.model_files import ModelFiles
from worker.slots import Slot, SlotSettings, cpu_count, rss_limit_mb

log = logging.getLogger("cutq.worker")
INLINE_PROCESSORS = frozenset({"noop"})


_MAGIC = ((b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF8", "gif"), (b"BM", "bmp"))


def _sniff_ext(data: bytes) -> str:
    """The extension a noop result keeps: its input's format, from the magic bytes."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((ext for magic, ext in _MAGIC if data.startswith(magic)), "bin")


class WorkerDaemon:
    """One worker process: `run()` until stopped or drained."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        context: zmq.Context | None = None,
        clock: Callable[[], float] = time.monotonic,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.notifier = notifier or Notifier.from_env({})
        self.name = config.name or f"{socket.gethostname()}-{os.getpid()}"
        # a stable identity across reconnects, so a restarted broker can adopt our tasks
        self.ident = f"w-{self.name}-{uuid.uuid4().hex[:8]}".encode()
        self._ctx = context or zmq.Context()
        self._own_ctx = context is None
        threads = config.threads_per_slot or max(1, cpu_count() // max(1, config.concurrency))
        self.settings = SlotSettings(
            threads=threads, max_bytes=config.max_image_bytes, max_pixels=config.max_image_pixels,
            preload_models=tuple(config.preload_models),
        )
        # concurrency 0 is auto: the slots are chosen in run(), by a trial (worker/autotune.py)
        self.slots = [Slot(i, self.settings) for i in range(config.concurrency)]
        self.auto_reason = ""
        self.waiting: deque[tuple[dict, bytes]] = deque()  # dispatched but no slot free yet
        self.outbox: list[tuple[dict, bytes | None]] = []
        self.sock: zmq.Socket | None = None
        self.draining = False
        self._drain_deadline = 0.0
        self._stop = False
        self.liveness = config.heartbeat_liveness
        self._backoff = config.reconnect_initial
        self._next_heartbeat = 0.0
        self._last_heard = 0.0
        self.models: list[str] = list(config.preload_models)
        # announced: the models it can serve, and the broker's result cache checks the digests;
        # looked at again each heartbeat, so weights copied in later are served without a restart
        self.weights = ModelFiles()
        self.credentials = Credentials.from_env(os.environ, config.key or None, config.server_key or None)

    # ------------------------------------------------------------------ session

    def _connect(self) -> None:
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.ROUTING_ID, self.ident)
        s.setsockopt(zmq.LINGER, 0)
        if self.credentials is not None:
            self.credentials.apply(s)
        s.connect(self.config.connect)
        self.sock = s
        self._announce()
        # silence counts from the announce on: building it (the providers import onnxruntime)
        # can outlast the liveness window on a busy machine, and a reconnect then costs every
        # task the broker has just sent a worker death
        self._last_heard = self.clock()

    def _announce(self) -> None:
        held = [[t["task_id"], t["attempt"]] for t in self._held()]
        self._send(p.Ready(
            name=self.name, host=socket.gethostname(), pid=os.getpid(),
            slots=0 if self.draining else len(self.slots) * self.config.batch_size,  # tasks it takes at once
            threads=self.settings.threads, models=self.models,
            providers=_providers(), processors=["rembg", "noop", "sleep"], running=held,
            model_files=self.weights.digests,
        ))

    def _held(self) -> list[dict]:
        return [t for s in self.slots for t in s.tasks] + [t for t, _ in self.waiting]

    def _send(self, msg: p.Message) -> None:
        assert self.sock is not None
        try:
            self.sock.send_multipart(p.encode(msg), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.warning("broker not reachable; dropped %s", type(msg).__name__)

    def _reconnect(self) -> None:
        """The broker went silent: new socket after a jittered, doubling pause."""
        delay = self._backoff * random.uniform(0.5, 1.5)
        log.warning("broker silent for %d heartbeats; reconnecting in %.2fs", self.config.heartbeat_liveness, delay)
        if self.sock is not None:
            self.sock.close(linger=0)
        # the pause grows to reconnect_max (x1.5 jitter), longer than a WatchdogSec: keep feeding it
        step = (self.notifier.watchdog_interval or delay) / 4
        resume = time.monotonic() + delay
        while (left := resume - time.monotonic()) > 0:
            time.sleep(min(left, step))
            self.notifier.watchdog(self.clock())
        self._backoff = min(self._backoff * 2, self.config.reconnect_max)
        self._connect()

    # ------------------------------------------------------------------ loop

    def stop(self, *_: object) -> None:
        """First call: drain (warm shutdown).  Second call: stop now (cold)."""
        if self.draining:
            self._stop = True
        self.draining = True
        self._drain_deadline = self.clock() + self.config.drain_timeout

    def run(self) -> int:
        """Serve until drained or stopped; returns the exit code."""
        if self.config.concurrency == 0 and not self.slots:
            self._autotune()
        if self.settings.preload_models:
            for slot in self.slots:  # load the models before the first task arrives
                slot.start()
        self._connect()
        self.notifier.ready()
        log.info("worker %s connected to %s with %d slots", self.name, self.config.connect, len(self.slots))
        try:
            while not self._stop:
                self._turn()
                # done draining once no slot runs anything: tasks still waiting are handed back
                if self.draining and (not any(s.busy for s in self.slots) or self.clock() >= self._drain_deadline):
                    break
            self._leave()
        finally:
            self.notifier.stopping()
            for slot in self.slots:
                slot.kill()
            if self.sock is not None:
                self.sock.close(linger=1000)
            if self._own_ctx:
                self._ctx.term()
        return 0

    def _autotune(self) -> None:
        """--concurrency auto: slots x threads from the cores and a trial on the first model."""
        from worker.autotune import calibrate

        model = (self.config.preload_models or (DEFAULT_MODEL,))[0]
        choice = calibrate(model, cpu_count(), self.config.threads_per_slot)
        self.auto_reason = choice.reason
        log.info("concurrency auto: %s", choice.reason)
        self.settings = replace(self.settings, threads=choice.threads)
        self.slots = [Slot(i, self.settings) for i in range(choice.slots)]

    def _turn(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        for slot in self.slots:
            if slot.conn is not None:
                poller.register(slot.fileno(), zmq.POLLIN)
        timeout = max(0.0, self._next_heartbeat - self.clock())
        if self.notifier.watchdog_interval:  # wake often enough to feed systemd's watchdog
            timeout = min(timeout, self.notifier.watchdog_interval / 4)
        events = dict(poller.poll(int(timeout * 1000) + 1))
        if self.sock in events:
            self._read_broker()
        for slot in self.slots:
            if slot.conn is not None and slot.fileno() in events:
                self._read_slot(slot)
            elif slot.conn is None and slot.started and self.clock() >= slot.restart_at:
                slot.start()
        self._start_waiting()
        self._flush_results()
        now = self.clock()
        self.notifier.watchdog(now)  # every turn (it rate-limits itself), not only at heartbeats
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.heartbeat_interval
            self.weights.rescan()
            self._send(p.Heartbeat(draining=self.draining, models=self.models, model_files=self.weights.digests))
            if now - self._last_heard > self.config.heartbeat_interval * self.config.heartbeat_liveness:
                self._reconnect()

    def _read_broker(self) -> None:
        assert self.sock is not None
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._last_heard = self.clock()
            self._backoff = self.config.reconnect_initial
            try:
                msg = p.decode(frames)
            except p.ProtocolError as e:
                log.warning("dropped malformed message from broker: %s", e)
                continue
            if isinstance(msg, p.Dispatch):
                self._on_dispatch(msg)
            elif isinstance(msg, p.CancelTasks):
                self._on_cancel({t for t in msg.task_ids if isinstance(t, int)})
            elif isinstance(msg, p.Disconnect):
                log.info("broker asked us to announce again: %s", msg.reason)
                self._announce()
            elif isinstance(msg, p.Reply) and not msg.ok:
                log.warning("broker refused a message: %s", msg.error)

    def _on_dispatch(self, msg: p.Dispatch) -> None:
        if len(msg.blobs) != len(msg.tasks):
            log.warning("dispatch with %d tasks but %d inputs dropped", len(msg.tasks), len(msg.blobs))
            return
        for task, data in zip(msg.tasks, msg.blobs, strict=True):
            if not (isinstance(task.get("task_id"), int) and isinstance(task.get("attempt"), int)
                    and isinstance(task.get("processor"), str) and isinstance(task.get("options", {}), dict)):
                log.warning("dropped a malformed task in a dispatch: %.200r", task)
                continue
            if task.get("processor") in INLINE_PROCESSORS:
                self.outbox.append(({"task_id": task["task_id"], "attempt": task["attempt"], "ok": True,
                                     "ext": _sniff_ext(data), "processor": task["processor"]}, data))
            else:
                self.waiting.append((task, data))

    def _on_cancel(self, task_ids: set[int]) -> None:
        self.waiting = deque((t, d) for t, d in self.waiting if t["task_id"] not in task_ids)
        for slot in self.slots:
            cancelled = [t["task_id"] for t in slot.tasks if t["task_id"] in task_ids]
            if cancelled:
                log.info("cancelling task %s: restarting slot %d", ", ".join(map(str, cancelled)), slot.index)
                others = [(t, d) for t, d in slot.items if t["task_id"] not in task_ids]
                slot.kill()
                slot.start()
                self.waiting.extendleft(reversed(others))  # its batch-mates run again, first

    def _start_waiting(self) -> None:
        if self.draining:
            return  # takes no new tasks: what the broker sent before it heard "draining" goes back
        for slot in self.slots:
            if not self.waiting:
                return
            if slot.conn is None and not slot.started:
                slot.start()  # slots with nothing to preload start on first use (noop-only workers: never)
            # only a ready slot: a pipe write of a big image to a process still importing rembg
            # would block this thread, and with it the heartbeats
            if slot.conn is not None and slot.ready and not slot.busy:
                if self._maybe_recycle(slot):
                    continue
                slot.submit_batch(self._next_batch())

    def _next_batch(self) -> list[tuple[dict, bytes]]:
        """The first waiting task, with (micro-batching) up to batch_size - 1 more waiting
        rembg tasks of the same model, in queue order."""
        first = self.waiting.popleft()
        if self.config.batch_size <= 1 or first[0]["processor"] != "rembg":
            return [first]
        model = (first[0].get("options") or {}).get("model", DEFAULT_MODEL)
        batch, rest = [first], deque()
        while self.waiting:
            item = self.waiting.popleft()
            if (len(batch) < self.config.batch_size and item[0]["processor"] == "rembg"
                    and (item[0].get("options") or {}).get("model", DEFAULT_MODEL) == model):
                batch.append(item)
            else:
                rest.append(item)
        self.waiting = rest
        return batch

    def _maybe_recycle(self, slot: Slot) -> bool:
        """Between tasks, replace a slot process that ran too long or grew too big."""
        c = self.config
        if slot.tasks_run and ((c.recycle_after_tasks and slot.tasks_run >= c.recycle_after_tasks) or (
            c.recycle_rss_mb and slot.rss_mb() > rss_limit_mb(c.recycle_rss_mb, slot)
        )):
            log.info("recycling slot %d after %d tasks (%.0f MiB)", slot.index, slot.tasks_run, slot.rss_mb())
            slot.stop()
            slot.start()
            return True
        return False

    def _read_slot(self, slot: Slot) -> None:
        assert slot.conn is not None
        try:
            while slot.conn.poll():
                self._on_slot_message(slot, slot.conn.recv())
        except (EOFError, OSError):
            tasks = slot.tasks
            reason = slot.exit_reason() if slot.process is not None else "inference process died"
            slot.kill()
            for task in tasks:
                self.outbox.append(({"task_id": task["task_id"], "attempt": task["attempt"], "ok": False,
                                     "error": reason, "error_kind": "transient"}, None))
            # a slot that dies before it is even ready (broken install, no memory) must not
            # spin: restart it after a doubling pause
            slot.crashes = 0 if slot.ready else slot.crashes + 1
            delay = min(0.5 * 2 ** slot.crashes, 30.0) if slot.crashes else 0.0
            slot.restart_at = self.clock() + delay
            log.warning("slot %d: %s; restarting it in %.1fs", slot.index, reason, delay)

    def _on_slot_message(self, slot: Slot, item: tuple) -> None:
        kind = item[0]
        if kind == "ready":
            slot.ready, slot.models, slot.crashes = True, item[1], 0
            self.models = sorted(set(self.models) | set(item[1]))
        elif kind == "log":
            log.warning("slot %d: %s", slot.index, item[1])
        elif kind == "progress":
            self._send(p.Progress(task_id=item[1], attempt=item[2], stage=item[3]))
        elif kind in ("ok", "error"):
            task = slot.finish(item[1])
            if task is None:
                return  # a reply from before a cancel-restart; nothing waits for it
            if kind == "ok":
                result: p.TaskResult = {"task_id": item[1], "attempt": item[2], "ok": True, "ext": item[4],
                                        "processor": task["processor"]}
                made_by = self.weights.digests.get(str((task.get("options") or {}).get("model")))
                if made_by:
                    result["model_file"] = made_by
                self.outbox.append((result, item[3]))
            else:
                self.outbox.append(({"task_id": item[1], "attempt": item[2], "ok": False,
                                     "error_kind": item[3], "error": item[4]}, None))

    def _flush_results(self) -> None:
        if not self.outbox:
            return
        msg = p.Results(results=[r for r, _ in self.outbox])
        msg.blobs = [data for r, data in self.outbox if data is not None]
        self.outbox = []
        self._send(msg)

    def _leave(self) -> None:
        """Hand back whatever is still held, then say goodbye."""
        returned = [[t["task_id"], t["attempt"]] for t in self._held()]
        self._flush_results()
        self._send(p.Goodbye(returned=returned))
        log.info("worker %s leaving; handed back %d tasks", self.name, len(returned))


def _providers() -> list[str]:
    try:
        from worker.processors import available_providers

        return available_providers()
    except Exception:
        return []


def serve(config: WorkerConfig) -> int:
    """Run a worker until SIGTERM (drain) / second SIGTERM or SIGINT (stop now)."""
    notifier = Notifier.from_env(os.environ)
    daemon = WorkerDaemon(config, notifier=notifier)
    signal.signal(signal.SIGTERM, daemon.stop)
    signal.signal(signal.SIGINT, daemon.stop)
    return daemon.run()
