"""Prometheus metrics for the broker (`cutq broker --metrics HOST:PORT`).

Counters and histograms are updated by the loop as things happen (a few microseconds
each); gauges are read from a snapshot the loop refreshes once a second, so a scrape
never touches the store or the loop's structures while the loop runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from broker.core import Core

_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400)
_RUN_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)


class _Snapshot(Collector):
    """Gauges from the last snapshot the loop took."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self._lock = threading.Lock()

    def set(self, values: dict[str, Any]) -> None:
        with self._lock:
            self.values = values

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            v = self.values
        if not v:
            return
        tasks = GaugeMetricFamily("cutq_tasks", "Tasks by state and tenant", labels=["state", "tenant"])
        for tenant, counts in v["by_tenant"].items():
            for state, n in counts.items():
                tasks.add_metric([state, tenant], n)
        yield tasks
        for name, doc, key in (
            ("cutq_queue_depth", "Queued tasks", "queue_depth"),
            ("cutq_workers_alive", "Workers connected and alive", "workers_total"),
            ("cutq_slots_total", "Slots of the live workers", "slots_total"),
            ("cutq_slots_busy", "Slots running a task", "slots_used"),
        ):
            yield GaugeMetricFamily(name, doc, value=v[key])
        storage = GaugeMetricFamily("cutq_storage_bytes", "Bytes held", labels=["where"])
        storage.add_metric(["database"], v["storage"]["db_bytes"])
        storage.add_metric(["blobs"], v["storage"]["blob_bytes"])
        storage.add_metric(["dedup_saved"], v["storage"]["dedup_saved_bytes"])
        yield storage
        yield GaugeMetricFamily("cutq_blobs", "Blob files held", value=v["storage"]["blob_count"])
        yield GaugeMetricFamily("cutq_cache_hits", "Tasks answered from the result cache",
                                value=v["storage"]["cache_hits"])
        hooks = GaugeMetricFamily("cutq_webhooks", "Webhook deliveries by state", labels=["state"])
        for state in ("pending", "delivered", "failed"):
            hooks.add_metric([state], v["webhooks"].get(state, 0))
        yield hooks


class Metrics:
    """What the broker exports; `observe_*` are called by the loop."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.submitted = Counter("cutq_tasks_submitted", "Tasks submitted", ["tenant"], registry=self.registry)
        self.finished = Counter("cutq_tasks_finished", "Task attempts finished, by outcome", ["outcome"],
                                registry=self.registry)
        self.retried = Counter("cutq_tasks_retried", "Attempts that failed and were queued again",
                               registry=self.registry)
        self.wait = Histogram("cutq_queue_wait_seconds", "From submission to the attempt's start", ["model"],
                              buckets=_WAIT_BUCKETS, registry=self.registry)
        self.run = Histogram("cutq_run_seconds", "From the attempt's start to its result", ["model"],
                             buckets=_RUN_BUCKETS, registry=self.registry)
        self.webhook_attempts = Counter("cutq_webhook_attempts", "Webhook delivery attempts, by outcome",
                                        ["outcome"], registry=self.registry)
        self._snapshot = _Snapshot()
        self.registry.register(self._snapshot)

    def serve(self, listen: str) -> None:
        """Serve /metrics on `listen` (host:port) from a thread of prometheus_client's."""
        host, _, port = listen.rpartition(":")
        start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)

    def refresh(self, core: Core) -> None:
        """Take the gauges' snapshot (on the loop, once a second)."""
        from broker import views

        stats = views.stats(core, None)
        self._snapshot.set({**stats, "webhooks": core.store.webhook_counts()})
