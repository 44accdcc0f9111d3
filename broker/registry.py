"""Who is connected: live workers (slots, running tasks, liveness) and event subscribers.

Plain in-memory bookkeeping for the broker loop; nothing here touches sockets or SQL.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class WorkerRecord:
    """One connected worker, keyed by its routing identity."""

    ident: bytes
    name: str
    host: str
    pid: int
    slots: int
    models: list[str]
    providers: list[str]
    processors: list[str]
    joined: float
    last_seen: float
    running: dict[int, int] = field(default_factory=dict)  # task_id -> attempt
    done: int = 0
    failed: int = 0
    state: str = "alive"  # alive | dead | left
    draining: bool = False  # finishing what it holds, takes nothing new
    held: bool = False  # drained by an admin (`cutq drain`): takes nothing new until resumed
    user: str = "anonymous"  # the authenticated key that registered it
    finished_at: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    model_files: dict[str, str] = field(default_factory=dict)  # model -> sha256 of its weights
    threads: int = 0  # onnxruntime threads per slot, as announced (0: not said)

    @property
    def free(self) -> int:
        taking = self.state == "alive" and not self.draining and not self.held
        return self.slots - len(self.running) if taking else 0

    def public(self, now_mono: float, now_wall: float) -> dict[str, Any]:
        """The worker as clients see it (`cutq workers`, the TUI)."""
        recent = [t for t in self.finished_at if t >= now_mono - 10.0]
        return {
            "id": self.ident.decode(errors="replace"), "name": self.name, "host": self.host, "pid": self.pid,
            "slots": self.slots, "busy": len(self.running), "models": self.models, "providers": self.providers,
            "threads": self.threads,
            "processors": self.processors, "tasks": sorted(self.running),
            "state": "draining" if (self.draining or self.held) and self.state == "alive" else self.state,
            "held": self.held,
            "last_seen_age": round(now_mono - self.last_seen, 3), "done": self.done, "failed": self.failed,
            "joined": now_wall - (now_mono - self.joined), "tasks_per_s": len(recent) / 10.0,
        }


@dataclass
class Subscription:
    """A client's event stream: one job's events, or everything its scope may see."""

    job_id: str | None
    expires: float
    tenant: str | None = None  # a client key only hears about its own tenant
    user: str = ""  # the key that subscribed: its stream ends when the key is revoked


class Registry:
    """Workers and subscribers the broker knows about, with liveness bookkeeping."""

    def __init__(self, keep_dead_for: float = 300.0) -> None:
        self.workers: dict[bytes, WorkerRecord] = {}
        self.subscribers: dict[bytes, Subscription] = {}
        self.keep_dead_for = keep_dead_for

    def alive(self) -> list[WorkerRecord]:
        return [w for w in self.workers.values() if w.state == "alive"]

    def get_alive(self, ident: bytes) -> WorkerRecord | None:
        w = self.workers.get(ident)
        return w if w is not None and w.state == "alive" else None

    def expired(self, now: float, timeout: float) -> list[WorkerRecord]:
        """Alive workers silent for longer than `timeout` (checks every one: no ordering assumed)."""
        return [w for w in self.alive() if now - w.last_seen > timeout]

    def forget_old(self, now: float) -> None:
        gone = [i for i, w in self.workers.items() if w.state != "alive" and now - w.last_seen > self.keep_dead_for]
        for ident in gone:
            del self.workers[ident]

    def subscribers_for(self, job_id: str) -> list[bytes]:
        return [i for i, s in self.subscribers.items() if s.job_id is None or s.job_id == job_id]

    def drop_expired_subscribers(self, now: float) -> None:
        for ident in [i for i, s in self.subscribers.items() if s.expires < now]:
            del self.subscribers[ident]
