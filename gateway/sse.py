"""Server-Sent Events from the broker's pushed events: one thread and one Client per stream.

A stream's thread subscribes to the job first and reads its status second, so no change
falls between the two: the first event is the status (`event: status`), then the
broker's events as they come (`task`, `job`, `progress`, each its JSON as `data`), and
`end` once the job has no queued or running task (or `error` when the broker is gone).
The thread hands items to the event loop (`call_soon_threadsafe`); the loop's side
writes them and a comment every `keepalive` seconds so proxies keep the line open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from gateway.broker import BrokerPool
from shared.client import CutqError
from shared.states import TERMINAL

log = logging.getLogger("cutq.http")

Item = tuple[str, Any]  # ("status" | "task" | "job" | "progress" | ... | "end" | "error", payload)
STATUS_CHECK_S = 5.0  # with no event for this long, ask the job's state (guards a missed event)
POLL_S = 0.5  # how often the thread looks at its stop flag


def frame(event: str, data: Any, event_id: int | None = None) -> bytes:
    """One SSE message: `id:`, `event:`, one `data:` line of compact JSON, a blank line."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    text = json.dumps(data, separators=(",", ":"), default=str)  # one line: JSON escapes newlines
    return f"{head}event: {event}\ndata: {text}\n\n".encode()


class EventFeed(threading.Thread):
    """Owns one broker Client for one job's events; stops when asked or when the job ends."""

    def __init__(self, pool: BrokerPool, as_tenant: str | None, job_id: str,
                 loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Item]) -> None:
        super().__init__(name=f"cutq-sse-{job_id[:12]}", daemon=True)
        self.pool, self.as_tenant, self.job_id = pool, as_tenant, job_id
        self._loop, self._queue = loop, queue
        self._stop_flag = threading.Event()

    def stop(self) -> None:
        self._stop_flag.set()

    def _put(self, item: Item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody listens any more
            self._stop_flag.set()

    def run(self) -> None:
        client = self.pool.new_client(self.as_tenant)
        try:
            self._follow(client)
        except CutqError as e:
            self._put(("error", e))
        except Exception as e:  # never a silent dead stream
            log.exception("event stream for job %s failed", self.job_id)
            self._put(("error", CutqError(f"{e.__class__.__name__}: {e}", "internal")))
        finally:
            client.timeout = 1.0
            try:
                client.unsubscribe()  # free the broker's record now rather than when the lease lapses
            except CutqError:
                pass
            client.close()

    def _follow(self, client: Any) -> None:
        client.subscribe(self.job_id)
        status = client.status(self.job_id)
        self._put(("status", status))
        if status["state"] in TERMINAL:
            self._put(("end", {"job_id": self.job_id, "state": status["state"]}))
            return
        checked = time.monotonic()
        while not self._stop_flag.is_set():
            events = client.next_events(POLL_S)
            state = None
            for e in events:
                kind = str(e.get("kind") or "event")
                if kind == "stats":
                    continue
                self._put((kind, e))
                if kind == "job" and e.get("job_id") == self.job_id:
                    state = e.get("state")
            if events:
                checked = time.monotonic()
            elif time.monotonic() - checked >= STATUS_CHECK_S:
                checked = time.monotonic()
                latest = client.status(self.job_id, tasks=False)
                if latest["state"] in TERMINAL:
                    self._put(("job", {"kind": "job", **latest}))
                    state = latest["state"]
            if state in TERMINAL:
                self._put(("end", {"job_id": self.job_id, "state": state}))
                return


async def stream(first: Item, queue: asyncio.Queue[Item], keepalive: float,
                 on_error: Callable[[CutqError], dict[str, Any]]) -> AsyncIterator[bytes]:
    """The response body: `retry`, the first item, then each item as it comes; ends after end/error."""
    yield b"retry: 3000\n\n"
    n = 0
    item: Item | None = first
    while True:
        if item is None:
            try:
                item = await asyncio.wait_for(queue.get(), keepalive)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
        kind, data = item
        item = None
        n += 1
        if kind == "error":
            yield frame("error", on_error(data), n)
            return
        yield frame(kind, data, n)
        if kind == "end":
            return
