"""Webhooks and Prometheus metrics on a real broker and worker.

A small HTTP server started by the test receives the webhooks: the signature is checked
with the tenant's secret, a receiver answering 500 is retried with backoff, and a
broker killed (kill -9) before it could deliver delivers after its restart.  /metrics is
parsed with prometheus_client's own parser and compared with `stats`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared import protocol as p
from shared.client import CutqError
from tests.cluster import Cluster, free_port, wait_for


class Receiver:
    """Records every POST; answers with the status codes queued in `answers` (then 200)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.answers: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = receiver.answers.pop(0) if receiver.answers else 200
                receiver.calls.append({"t": time.monotonic(), "body": body, "code": code,
                                       "headers": dict(self.headers)})
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _submit(client, webhook: str | None, tag: str = "a") -> str:
    msg = p.Submit(req=0, names=[f"{tag}.png"], processor="noop", webhook=webhook)
    msg.blobs = [b"\x89PNG\r\n\x1a\n" + tag.encode()]
    return client._request(msg).data["job_id"]


def _verify(call: dict, secret: str) -> dict:
    ts = call["headers"]["X-Cutq-Timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), ts.encode() + b"." + call["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(call["headers"]["X-Cutq-Signature"], expected)
    return json.loads(call["body"])


def test_a_finished_job_calls_its_webhook_signed(cluster: Cluster, receiver: Receiver):
    cluster.start_broker("--webhook-allow", "127.0.0.1")
    cluster.start_worker(1, "--preload", "")
    client = cluster.client()
    job = _submit(client, receiver.url)
    wait_for(lambda: receiver.calls, 20, what="the webhook")
    secret = next(t["webhook_secret"] for t in client.tenants() if t["tenant"] == "default")
    body = _verify(receiver.calls[0], secret)
    assert body["job_id"] == job and body["state"] == "done" and body["done"] == 1 and body["errors"] == []
    with pytest.raises(AssertionError):
        _verify(receiver.calls[0], "not-the-secret")
    wait_for(lambda: client.status(job)["webhook"]["state"] == "delivered", 10)
    assert len(receiver.calls) == 1


def test_private_targets_are_refused_unless_allowed(cluster: Cluster, receiver: Receiver):
    cluster.start_broker()
    client = cluster.client()
    for url in (receiver.url, "http://10.1.2.3/x", "ftp://example.com/x", "http:///nohost"):
        with pytest.raises(CutqError) as err:
            _submit(client, url)
        assert err.value.code == "bad_request", url
    assert client.stats()["jobs"] == 0  # a refused submission stores nothing


def test_a_failing_receiver_is_retried_with_backoff(cluster: Cluster, receiver: Receiver):
    cluster.start_broker("--webhook-allow", "127.0.0.1")
    cluster.start_worker(1, "--preload", "")
    client = cluster.client()
    receiver.answers = [500, 500, 503]
    job = _submit(client, receiver.url)
    wait_for(lambda: len(receiver.calls) >= 4, 40, what="three failures, then a delivery")
    hook = wait_for(lambda: (h := client.status(job)["webhook"])["state"] == "delivered" and h, 10)
    assert hook["attempts"] == 4 and [c["code"] for c in receiver.calls] == [500, 500, 503, 200]
    gaps = [b["t"] - a["t"] for a, b in zip(receiver.calls, receiver.calls[1:], strict=False)]
    assert all(g >= 0.4 for g in gaps), gaps  # never hammered: at least half the first pause
    assert gaps[2] > gaps[0], gaps  # doubling: the third pause (2-6 s) beats the first (0.5-1.5 s)


def test_a_delivery_pending_at_a_crash_is_made_after_the_restart(cluster: Cluster, receiver: Receiver):
    cluster.start_broker("--webhook-allow", "127.0.0.1")
    cluster.start_worker(1, "--preload", "")
    client = cluster.client()
    receiver.answers = [500] * 1000  # down, as far as the broker can tell
    job = _submit(client, receiver.url)
    wait_for(lambda: receiver.calls, 20, what="a first, failed attempt")
    Cluster.kill9(cluster.broker)
    receiver.answers.clear()  # the receiver is back
    seen = len(receiver.calls)
    cluster.start_broker("--webhook-allow", "127.0.0.1")
    client = cluster.client()
    wait_for(lambda: len(receiver.calls) > seen and receiver.calls[-1]["code"] == 200, 60,
             what="the delivery after the restart")
    assert json.loads(receiver.calls[-1]["body"])["job_id"] == job
    wait_for(lambda: client.status(job)["webhook"]["state"] == "delivered", 10)


def test_metrics_count_what_stats_count(cluster: Cluster):
    port = free_port()
    cluster.start_broker("--metrics", f"127.0.0.1:{port}")
    cluster.start_worker(2, "--preload", "")
    client = cluster.client()
    jobs = [client.submit([(f"{t}{i}.png", b"\x89PNG" + f"{t}{i}".encode()) for i in range(3)], processor="noop",
                          tenant=t) for t in ("A", "B")]
    for job in jobs:
        assert client.wait(job, timeout=30)["state"] == "done"

    def scrape() -> dict:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def settled() -> dict | None:
        m = scrape()  # gauges are a snapshot the loop takes each second
        return m if m.get(("cutq_tasks", (("state", "done"), ("tenant", "B")))) == 3 else None

    m = wait_for(settled, 10, what="the done tasks in the snapshot")
    stats = client.stats()
    for tenant, counts in stats["by_tenant"].items():
        for state, n in counts.items():
            assert m[("cutq_tasks", (("state", state), ("tenant", tenant)))] == n, (tenant, state)
    assert m[("cutq_tasks_submitted_total", (("tenant", "A"),))] == 3
    assert m[("cutq_tasks_finished_total", (("outcome", "done"),))] == stats["done"] == 6
    assert m[("cutq_workers_alive", ())] == stats["workers_total"] == 1
    assert m[("cutq_queue_wait_seconds_count", (("model", "-"),))] == 6
