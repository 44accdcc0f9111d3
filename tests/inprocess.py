"""In-process broker harness: a real Broker on inproc, a fake clock, scripted DEALER peers.

The test drives the loop itself (`turn()`, never `run()`) and moves time with
`advance()`/`elapse()`, so liveness, retry backoff and heartbeats take no real time
and come out the same on every run.  On inproc a message is in the peer's pipe when
`send` returns, so what a turn sent is there once `turn()` returns: `expect` still
polls (up to a second, a condition wait), `take`/`quiet` read without waiting.
Committed state is read through a separate SQLite connection, never the broker's.
"""

from __future__ import annotations

import itertools
import os
import select
import sqlite3
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import zmq

from broker.server import Broker
from shared import protocol as p
from shared.config import BrokerConfig
from shared.security import is_local_endpoint

M = TypeVar("M", bound=p.Message)
WAIT_S = 1.0  # the longest a peer waits for something a turn sent


class FakeClock:
    """Monotonic and wall time that move only when the test says so."""

    def __init__(self, start: float = 1000.0, wall_offset: float = 1_700_000_000.0) -> None:
        self.now = start
        self._offset = wall_offset

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self._offset

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Peer:
    """A scripted DEALER: sends protocol messages, keeps what it receives in `inbox`."""

    def __init__(self, ctx: zmq.Context, endpoint: str, identity: bytes) -> None:
        self.identity = identity
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, identity)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(endpoint)
        self.inbox: list[p.Message] = []

    def send(self, msg: p.Message) -> None:
        self.send_frames(p.encode(msg))

    def send_frames(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames, zmq.NOBLOCK)

    def _pull(self, timeout_ms: int = 0) -> None:
        """Move what has arrived into the inbox, waiting up to `timeout_ms` for the first message."""
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.inbox.append(p.decode(frames))  # the broker never sends anything undecodable

    def take(self, cls: type[M]) -> list[M]:
        """Every `cls` message received so far (removed from the inbox); does not wait."""
        self._pull()
        mine = [m for m in self.inbox if isinstance(m, cls)]
        self.inbox = [m for m in self.inbox if not isinstance(m, cls)]
        return mine  # type: ignore[return-value]

    def expect(self, cls: type[M], timeout: float = WAIT_S, **fields: Any) -> M:
        """The first `cls` message (with these field values) to arrive within `timeout`."""
        polls = max(1, int(timeout / 0.05))  # of 50 ms each
        for _ in range(polls):
            for i, m in enumerate(self.inbox):
                if isinstance(m, cls) and all(getattr(m, k) == v for k, v in fields.items()):
                    return self.inbox.pop(i)  # type: ignore[return-value]
            self._pull(50)
        raise AssertionError(f"{self.identity!r} got no {cls.__name__} {fields or ''} within {timeout}s; "
                             f"inbox: {self.inbox!r}")

    def quiet(self, cls: type[p.Message]) -> bool:
        """True if no `cls` message has arrived (inproc: a turn's sends are there when it returns)."""
        return not self.take(cls)

    def close(self) -> None:
        self.sock.close(0)


class FakeWorker(Peer):
    """A worker that does only what the test scripts: announce, heartbeat, report, leave."""

    def __init__(self, ctx: zmq.Context, endpoint: str, name: str, slots: int) -> None:
        super().__init__(ctx, endpoint, name.encode())
        self.name, self.slots = name, slots

    def ready(self, running: Iterable[tuple[int, int]] = ()) -> None:
        self.send(p.Ready(name=self.name, host="inproc", pid=os.getpid(), slots=self.slots,
                          processors=["noop"], running=[list(r) for r in running]))

    def heartbeat(self, draining: bool = False) -> None:
        self.send(p.Heartbeat(draining=draining))

    def dispatched(self) -> list[dict]:
        """The tasks of every DISPATCH received so far, in order; does not wait."""
        return [t for d in self.take(p.Dispatch) for t in d.tasks]

    def expect_tasks(self) -> list[dict]:
        """The tasks of the next DISPATCH (waiting for it), plus any others already here."""
        first = self.expect(p.Dispatch)
        return first.tasks + self.dispatched()

    def results(self, *tasks: dict, ok: bool = True, ext: str = "png", data: bytes = b"cut-out",
                error: str = "", error_kind: str = "transient") -> None:
        """Report `tasks` (dicts as dispatched) finished: ok with `data` each, or failed."""
        msg = p.Results(results=[
            {"task_id": t["task_id"], "attempt": t["attempt"], "ok": ok, "ext": ext, "error": error,
             "error_kind": error_kind, "processor": "noop"} for t in tasks])
        msg.blobs = [data for _ in tasks] if ok else []
        self.send(msg)

    def goodbye(self, *tasks: dict) -> None:
        self.send(p.Goodbye(returned=[[t["task_id"], t["attempt"]] for t in tasks]))


class FakeClient(Peer):
    """A client whose requests carry fresh `req` ids; replies are matched by them."""

    _ids = itertools.count(1)

    def request(self, msg: p.Message) -> int:
        msg.req = next(self._ids)  # type: ignore[attr-defined]
        self.send(msg)
        return msg.req  # type: ignore[attr-defined]

    def reply(self, req: int, timeout: float = WAIT_S) -> p.Reply:
        return self.expect(p.Reply, timeout, req=req)


def images(n: int, tag: str = "img") -> tuple[list[str], list[bytes]]:
    """Names and bytes of `n` small distinct inputs (the noop processor never reads them)."""
    return [f"{tag}-{i}.png" for i in range(n)], [f"{tag}-{i}".encode() for i in range(n)]


def submit_msg(n: int, tag: str = "img", tenant: str = "default", priority: int = 0) -> p.Submit:
    names, blobs = images(n, tag)
    msg = p.Submit(req=0, names=names, processor="noop", options={}, priority=priority, tenant=tenant)
    msg.blobs = blobs
    return msg


class InprocBroker:
    """A real Broker bound on inproc in a test's tmp dir, with its clock, context and peers."""

    def __init__(self, tmp: Path, **config: Any) -> None:
        self.clock = FakeClock()
        self.ctx = zmq.Context()
        self.endpoint = f"inproc://cutq-test-{uuid.uuid4().hex}"
        assert is_local_endpoint(self.endpoint), "inproc must count as local: no CURVE needed"
        self.config = BrokerConfig(**{
            "bind": self.endpoint, "data_dir": tmp / "data", "heartbeat_interval": 1.0,
            "heartbeat_liveness": 3, "synchronous": "NORMAL", **config})
        self.db_path = self.config.data_dir / "cutq.db"
        self.peers: list[Peer] = []
        self.broker = Broker(self.config, context=self.ctx, clock=self.clock, wall=self.clock.wall)

    # ------------------------------------------------------------------ the loop and time

    def turn(self, n: int = 1) -> None:
        """`n` turns, each followed by the turns that apply the blob writes it started."""
        for _ in range(n):
            self.broker.turn()
            self.settle()

    def settle(self, timeout: float = 5.0) -> None:
        """Blob writes run on threads: wait for each (a condition wait) and let the loop apply it."""
        blobio = self.broker.core.blobio
        deadline = time.monotonic() + timeout
        while blobio.pending:
            assert time.monotonic() < deadline, f"{blobio.pending} blob writes unfinished after {timeout}s"
            select.select([blobio.wake_fd], [], [], 0.05)
            self.broker.turn()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def elapse(self, seconds: float, heartbeats: Iterable[FakeWorker] = ()) -> None:
        """Let `seconds` pass in steps of at most one heartbeat interval, a turn after each;
        the workers in `heartbeats` send a heartbeat before each step, the others stay silent."""
        beating = list(heartbeats)
        left = seconds
        while left > 1e-9:
            step = min(left, self.config.heartbeat_interval)
            for w in beating:
                w.heartbeat()
            self.advance(step)
            self.turn()
            left -= step

    # ------------------------------------------------------------------ peers

    def worker(self, name: str, slots: int = 1) -> FakeWorker:
        """A worker that has announced itself and been registered (one turn)."""
        w = FakeWorker(self.ctx, self.endpoint, name, slots)
        self.peers.append(w)
        w.ready()
        self.turn()
        return w

    def client(self, name: str | None = None) -> FakeClient:
        c = FakeClient(self.ctx, self.endpoint, (name or f"client-{len(self.peers)}").encode())
        self.peers.append(c)
        return c

    def ask(self, client: FakeClient, msg: p.Message) -> p.Reply:
        """Send a request, run one turn, return its reply."""
        req = client.request(msg)
        self.turn()
        return client.reply(req)

    def submit(self, client: FakeClient, n: int, tag: str = "img", **kw: Any) -> tuple[str, list[int]]:
        """Submit `n` noop images in one job; returns the job id and its task ids."""
        r = self.ask(client, submit_msg(n, tag, **kw))
        assert r.ok, r
        return r.data["job_id"], r.data["tasks"]

    # ------------------------------------------------------------------ committed state

    def committed(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows as another process would see them: a fresh read-only connection, committed data only."""
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def result_bytes(self, task_id: int) -> bytes | None:
        """A task's stored result, read from the blob store as another process would."""
        rows = self.committed("SELECT result_digest FROM tasks WHERE id = ?", (task_id,))
        if not rows or rows[0][0] is None:
            return None
        digest = rows[0][0]
        inline = self.committed("SELECT data FROM blob_data WHERE digest = ?", (digest,))  # a small one
        if inline:
            return bytes(inline[0][0])
        return (self.config.data_dir / "blobs" / digest[:2] / digest[2:4] / digest).read_bytes()

    def task(self, task_id: int) -> dict:
        cols = ("state", "attempts", "failures", "worker_deaths", "worker", "error", "result_ext")
        rows = self.committed(f"SELECT {', '.join(cols)} FROM tasks WHERE id = ?", (task_id,))
        assert rows, f"task {task_id} not in the database"
        return dict(zip(cols, rows[0], strict=True))

    def attempts(self, task_id: int) -> list[tuple[int, str, str | None]]:
        """(attempt, worker, outcome) of every recorded attempt of a task."""
        return self.committed("SELECT attempt, worker, outcome FROM attempts WHERE task_id = ? ORDER BY attempt",
                              (task_id,))

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
        self.broker.close()
        self.ctx.term()
