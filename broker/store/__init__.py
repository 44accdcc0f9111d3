"""All of cutq's SQL: the durable queue in one SQLite (WAL) file.

`Store` is one class assembled from one file per concern: base (connection,
schema, transactions, blob references), tasks (every state change), reads, and
cleanup (delete, purge, retention, vacuum).  Images are not here: rows name them
by digest, and broker/blobs.py keeps the bytes.
"""

from __future__ import annotations

from broker.store.base import BlobRef, Change, Claimed, QueuedTask, StoreError, referenced_checker
from broker.store.cleanup import Cleanup
from broker.store.reads import SORT_KEYS, Reads
from broker.store.tasks import CACHED_PROCESSORS, MODEL_PROCESSORS, Finished, QueuedRun, TaskWrites, cache_key
from broker.store.webhooks import Webhooks


class Store(TaskWrites, Reads, Cleanup, Webhooks):
    """The queue's durable state.  Not thread-safe: the broker loop owns it."""


__all__ = [
    "CACHED_PROCESSORS", "MODEL_PROCESSORS", "SORT_KEYS", "BlobRef", "Change", "Claimed", "Finished", "QueuedRun",
    "QueuedTask",
    "Store", "StoreError", "cache_key", "referenced_checker",
]
