"""Blob writes, deletions and the orphan sweep on worker threads, off the broker's loop.

The loop hands bytes over with a callback; a thread hashes and writes them
(fsynced), then queues the callback and wakes the loop through a pipe that its
poller watches.  Callbacks run on the loop thread, inside a turn, so what they
write to the store commits with that turn.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import queue
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from broker.blobs import BlobStore, digest_of

log = logging.getLogger("cutq.broker")
Stored = Callable[[list[str] | OSError], None]


def describe(e: OSError) -> str:
    """An OS error in words a user acts on (disk full says so)."""
    if e.errno == errno.ENOSPC:
        return f"disk full ({e.strerror})"
    if e.errno == errno.EROFS:
        return f"the data dir is read-only ({e.strerror})"
    return e.strerror or str(e)


class BlobIO:
    """A small pool for blob I/O, and the queue of callbacks it leaves for the loop."""

    def __init__(self, store: BlobStore, threads: int = 2) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="cutq-blobs")
        self._done: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        self.pending = 0  # writes not yet called back
        self.pinned: Counter[str] = Counter()  # digests an unfinished upload refers to: never deleted
        # digests written (or found already there) whose rows are not committed yet: a deletion
        # of the same bytes, decided before, must not remove them under the new rows' feet
        self._fresh: Counter[str] = Counter()
        self._ran: list[list[str]] = []  # digests of the callbacks run this turn
        # the decision to delete is one step with the counts it reads; a write marks its digest fresh
        # under it first, so no deletion decided after that removes the bytes
        self._lock = threading.Lock()
        # writes of one digest one at a time (a second finds the first's file whole and durable),
        # writes of different digests side by side: their fsyncs overlap
        self._stripes = [threading.Lock() for _ in range(64)]
        self.referenced: Callable[[str], bool] = lambda digest: False  # committed rows name it?

    def write(self, blobs: Sequence[bytes | memoryview], then: Stored) -> None:
        """Store `blobs` durably on a thread; `then(digests)` (or `then(error)`) runs on the loop."""
        self.pending += 1

        def work() -> None:
            stored: list[str] = []
            try:
                for b in blobs:
                    digest = digest_of(b)
                    with self._lock:
                        self._fresh[digest] += 1
                    try:
                        with self._stripes[int(digest[:2], 16) % len(self._stripes)]:
                            self.store.put(b, digest)
                    except OSError:
                        with self._lock:
                            self._fresh[digest] -= 1
                        raise
                    stored.append(digest)
                result: list[str] | OSError = stored
            except OSError as e:
                result = e
            self._done.put(functools.partial(self._called_back, then, result, stored))
            os.write(self._wake_w, b"x")

        self._pool.submit(work)

    def _called_back(self, then: Stored, result: list[str] | OSError, stored: list[str]) -> None:
        self.pending -= 1
        self._ran.append(stored)
        then(result)

    def post(self, callback: Callable[[], None]) -> None:
        """From any thread: run `callback` on the loop thread, in its next turn (wakes the loop)."""
        self._done.put(callback)
        os.write(self._wake_w, b"x")

    def turn_ended(self) -> None:
        """The turn that ran this batch of callbacks committed (or rolled back): their rows
        now name the blobs, or never will, so deletions may judge them again."""
        ran, self._ran = self._ran, []
        with self._lock:
            for stored in ran:
                self._fresh.subtract(stored)
            self._fresh = +self._fresh  # drop zeros

    def delete(self, digests: Sequence[str]) -> None:
        """Remove blobs no row refers to any more (pinned ones stay: an upload still needs them)."""
        doomed = [d for d in digests if self.pinned[d] <= 0]
        if doomed:
            self._pool.submit(self._delete_unused, doomed)

    def _delete_unused(self, digests: list[str]) -> None:
        """Delete, under the write lock, only what is still unused: not just written again for a
        new submission, not pinned, not named by a committed row."""
        try:
            with self._lock:
                self._delete([d for d in digests
                              if self._fresh[d] <= 0 and self.pinned[d] <= 0 and not self.referenced(d)])
        except Exception:  # a thread's failure must be seen
            log.exception("deleting %d blobs failed", len(digests))

    def _delete(self, digests: list[str]) -> None:
        # `cutq backup` copies the blobs its database snapshot names: while its DATA/backup.lock is
        # fresh these wait, then go back through delete() and its checks (broker/backup.py)
        from broker.backup import deletion_hold

        hold = deletion_hold(self, getattr(self.store, "root", None))
        if hold is not None:
            digests = hold.admit(digests, self.delete)
        for d in digests:
            try:
                self.store.delete(d)
            except OSError as e:
                log.warning("could not delete blob %s: %s", d[:12], e)

    def sweep(self, is_referenced: Callable[[str], bool], older_than: float) -> None:
        """Delete blobs written before `older_than` that no row refers to (a crash between a
        blob's write and its rows' commit leaves such orphans).  `is_referenced` must be safe
        to call from a thread (a read-only connection of its own)."""

        def work() -> None:
            from broker.backup import LOCK_NAME, lock_is_fresh

            swept = 0
            root = getattr(self.store, "root", None)
            if root is not None and lock_is_fresh(root.parent / LOCK_NAME):
                log.info("a backup is running: the orphan blob sweep waits for the next start")
                return
            try:
                for digest, mtime in self.store.digests():
                    with self._lock:
                        if (mtime < older_than and self.pinned[digest] <= 0 and self._fresh[digest] <= 0
                                and not is_referenced(digest)):
                            self.store.delete(digest)
                            swept += 1
            except Exception:  # a thread's failure must be seen
                log.exception("the orphan blob sweep stopped after %d", swept)
            if swept:
                log.info("swept %d orphan blobs left by an interrupted write", swept)

        self._pool.submit(work)

    def run_finished(self) -> int:
        """Run the callbacks of finished writes (on the loop thread); returns how many ran."""
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass
        n = 0
        while True:
            try:
                callback = self._done.get_nowait()
            except queue.Empty:
                return n
            n += 1
            callback()

    def close(self) -> None:
        """Let running writes finish, then stop; their callbacks never run, so those
        submissions were never acknowledged, and their blobs are swept at the next start."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        os.close(self.wake_fd)
        os.close(self._wake_w)
