"""Inference slots: one child process per slot, so a running task can be stopped.

An ONNX run cannot be interrupted in-thread, so cancel = kill the slot's process and
start a fresh one.  The daemon polls each slot's pipe beside its ZeroMQ socket;
a slot never blocks the thread that talks to the broker.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

_CTX = mp.get_context("spawn")  # never fork a process that holds ZeroMQ sockets
# recycle_rss_mb -1 (auto): above max(this, 2x the slot's RSS after its first task). A u2netp slot
# settles near 525 MiB (225 MiB of imports, ~290 MiB of onnxruntime arena) and stays under 600 MiB
# after a 12-megapixel photo; larger models start higher and get twice their own size.
AUTO_RSS_FLOOR_MB = 1024


@dataclass(frozen=True)
class SlotSettings:
    """What a slot process needs to build its processors."""

    threads: int = 1
    providers: tuple[str, ...] | None = None
    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 64_000_000
    preload_models: tuple[str, ...] = ()


def _slot_main(conn: Connection, settings: SlotSettings) -> None:
    """Child process: run tasks from the pipe until it closes (the worker died or let go)."""
    try:
        _serve_slot(conn, settings)
    except (BrokenPipeError, EOFError, ConnectionResetError):
        pass


def _serve_slot(conn: Connection, settings: SlotSettings) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when slots stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from worker.images import InputError
    from worker.processors import make_processor

    processors: dict[str, Any] = {}

    def processor(name: str):
        if name not in processors:
            processors[name] = make_processor(
                name, threads=settings.threads, providers=list(settings.providers) if settings.providers else None,
                max_bytes=settings.max_bytes, max_pixels=settings.max_pixels,
            )
        return processors[name]

    if settings.preload_models:
        try:
            processor("rembg").preload(settings.preload_models)
        except Exception as e:  # a missing model only fails the tasks that need it
            conn.send(("log", f"preloading {', '.join(settings.preload_models)} failed: {e}"))
    conn.send(("ready", sorted(getattr(processors.get("rembg"), "loaded_models", []))))
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        if item is None:
            return
        if item[0] == "batch":  # micro-batching: several rembg tasks of one model, one onnxruntime run
            _run_batch(conn, processor("rembg"), item[1], InputError)
            continue
        task, data = item
        conn.send(("progress", task["task_id"], task["attempt"], "running"))
        try:
            result = processor(task["processor"]).process(data, task.get("options") or {})
        except Exception as e:
            result = e
        _reply(conn, task, result, InputError)


def _run_batch(conn: Connection, rembg: Any, items: list[tuple[dict, bytes]], input_error: type) -> None:
    for task, _ in items:
        conn.send(("progress", task["task_id"], task["attempt"], "running"))
    try:
        results = rembg.process_batch([(data, task.get("options") or {}) for task, data in items])
    except Exception as e:  # the batch as a whole failed: each of its tasks says so
        results = [e] * len(items)
    for (task, _), result in zip(items, results, strict=True):
        _reply(conn, task, result, input_error)


def _reply(conn: Connection, task: dict, result: Any, input_error: type) -> None:
    """("ok", id, attempt, bytes, ext) or ("error", id, attempt, kind, reason) for one task."""
    tid, attempt = task["task_id"], task["attempt"]
    if isinstance(result, input_error):
        conn.send(("error", tid, attempt, "input", str(result)))
    elif isinstance(result, MemoryError):
        conn.send(("error", tid, attempt, "transient", "out of memory"))
    elif isinstance(result, BaseException):  # anything else may work elsewhere: retried by the broker
        conn.send(("error", tid, attempt, "transient", f"{result.__class__.__name__}: {result}"))
    else:
        conn.send(("ok", tid, attempt, *result))


@dataclass
class Slot:
    """The parent's handle on one slot process."""

    index: int
    settings: SlotSettings
    process: Any = None
    conn: Connection | None = None
    items: list[tuple[dict, bytes]] = field(default_factory=list)  # what it runs now: 1 task, or a batch
    tasks_run: int = 0
    models: list[str] = field(default_factory=list)
    ready: bool = False
    started: bool = False  # ever started: from then on a dead process is restarted
    crashes: int = 0  # deaths before reaching ready, in a row
    restart_at: float = 0.0
    first_task_rss: float = 0.0  # MiB, read when it is idle after its first task (auto recycling)

    def start(self) -> None:
        parent, child = _CTX.Pipe(duplex=True)
        self.process = _CTX.Process(target=_slot_main, args=(child, self.settings), daemon=True,
                                    name=f"cutq-slot-{self.index}")
        self.process.start()
        child.close()
        self.conn, self.items, self.tasks_run, self.ready, self.started = parent, [], 0, False, True
        self.first_task_rss = 0.0

    @property
    def busy(self) -> bool:
        return bool(self.items)

    @property
    def task(self) -> dict | None:
        """The (first) task it runs now."""
        return self.items[0][0] if self.items else None

    @property
    def tasks(self) -> list[dict]:
        return [t for t, _ in self.items]

    def fileno(self) -> int:
        assert self.conn is not None
        return self.conn.fileno()

    def submit(self, task: dict, data: bytes) -> None:
        self.submit_batch([(task, data)])

    def submit_batch(self, items: list[tuple[dict, bytes]]) -> None:
        """Run these tasks (rembg tasks of one model when more than one) as one batch."""
        assert self.conn is not None and not self.items and items
        self.items = list(items)
        self.tasks_run += len(items)
        self.conn.send(items[0] if len(items) == 1 else ("batch", self.items))

    def finish(self, task_id: int) -> dict | None:
        """The task `task_id` has answered: no longer running here (None if it was not)."""
        for i, (task, _) in enumerate(self.items):
            if task["task_id"] == task_id:
                del self.items[i]
                return task
        return None

    def kill(self) -> None:
        """Stop the process now (cancel or shutdown); the slot must be started again to reuse."""
        if self.process is not None and self.process.is_alive():
            self.process.kill()
        if self.process is not None:
            self.process.join(timeout=5)
        if self.conn is not None:
            self.conn.close()
        self.conn, self.items = None, []

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the process to exit after its current task; kill it if it lingers."""
        if self.conn is not None:
            try:
                self.conn.send(None)
            except OSError:
                pass
        if self.process is not None:
            self.process.join(timeout=timeout)
        self.kill()

    def rss_mb(self) -> float:
        """Resident memory of the slot process in MiB (0 if unknown)."""
        try:
            with open(f"/proc/{self.process.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, AttributeError, ValueError):
            pass
        return 0.0

    def exit_reason(self) -> str:
        if self.process is not None and self.process.exitcode is None:
            self.process.join(timeout=1.0)  # its pipe reads EOF a moment before it is reaped
        code = self.process.exitcode if self.process is not None else None
        if code is not None and code < 0:
            return f"inference process died (signal {signal.Signals(-code).name})"
        return f"inference process exited (code {code})"


def rss_limit_mb(configured: int, slot: Slot) -> float:
    """The RSS above which `slot` is recycled: `configured` MiB, or for -1 (auto)
    max(AUTO_RSS_FLOOR_MB, 2x its RSS after its first task), read on the first call
    once it has run a task (the daemon asks only between tasks)."""
    if configured >= 0:
        return float(configured)
    if not slot.first_task_rss and slot.tasks_run:
        slot.first_task_rss = slot.rss_mb()
    return max(float(AUTO_RSS_FLOOR_MB), 2 * slot.first_task_rss)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
