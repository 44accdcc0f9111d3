"""Webhooks: when a job ends, POST a signed JSON summary to the URL given at submit.

The loop picks due deliveries from the store's outbox once a second and builds their
bodies; a small thread pool makes the HTTP calls (never the loop); each outcome comes
back to the loop (BlobIO.post) and is written in a turn: delivered, retried after a
doubling, jittered pause, or given up after `webhook_retry_s`.  A body is signed with
the tenant's secret: `X-Cutq-Signature: sha256=HMAC(secret, "<timestamp>.<body>")`
with the timestamp in `X-Cutq-Timestamp`, so a receiver can check both origin and age.
Targets in private, loopback and link-local ranges are refused unless allowed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import random
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from broker.core import Core

log = logging.getLogger("cutq.broker")
TIMEOUT_S = 10.0
FIRST_RETRY_S, MAX_RETRY_S = 1.0, 300.0
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allow(spec: str) -> tuple[Network, ...]:
    """'127.0.0.1,10.0.0.0/8' -> networks (ValueError naming the bad one)."""
    out = []
    for part in filter(None, (s.strip() for s in spec.split(","))):
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"not an address or network: {part!r}") from None
    return tuple(out)


def url_problem(url: str, allow: Sequence[Network] = ()) -> str:
    """Why `url` cannot be a webhook, as far as can be told without DNS ("" when it may be)."""
    if len(url) > 2048:
        return "webhook URL too long (over 2048 characters)"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"webhook must be an http:// or https:// URL, not {url[:80]!r}"
    try:
        ip = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return ""  # a name: checked against the ranges when it is resolved, at delivery
    return _address_problem(ip, allow)


def _address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow: Sequence[Network]) -> str:
    if any(ip in net for net in allow):
        return ""
    if ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return (f"webhook target {ip} is a private, loopback or reserved address "
                "(allow it with cutq broker --webhook-allow)")
    return ""


def resolve_problem(url: str, allow: Sequence[Network]) -> str:
    """Every address the URL's host resolves to must be allowed (checked just before sending)."""
    parts = urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except OSError as e:
        return f"cannot resolve {parts.hostname}: {e}"
    for info in infos:
        problem = _address_problem(ipaddress.ip_address(info[4][0]), allow)
        if problem:
            return problem
    return ""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def deliver(url: str, body: bytes, secret: str, allow: Sequence[Network]) -> str:
    """POST `body` to `url`; "" when the receiver answered 2xx, else why not (one line)."""
    problem = resolve_problem(url, allow)
    if problem:
        return problem
    timestamp = str(int(time.time()))
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "cutq-webhook/1",
        "X-Cutq-Timestamp": timestamp, "X-Cutq-Signature": sign(secret, timestamp, body),
    })
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 (scheme checked)
            response.read(1 << 16)
            return ""
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code} {e.reason}"
    except (urllib.error.URLError, OSError) as e:
        return f"cannot reach {urlsplit(url).hostname}: {getattr(e, 'reason', e)}"


class Webhooks:
    """Picks due deliveries, sends them on threads, records what happened."""

    def __init__(self, core: Core, allow: Sequence[Network], public_url: str = "") -> None:
        self.core = core
        self.allow = tuple(allow)
        self.public_url = public_url.rstrip("/")
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="cutq-webhooks")
        self.in_flight: set[str] = set()

    def secret(self, tenant: str) -> str:
        """The tenant's signing secret, made on first use (written in the current turn)."""
        key = f"webhook_secret:{tenant}"
        found = self.core.store.get_meta(key)
        if found is None:
            found = secrets.token_hex(32)
            self.core.store.set_meta(key, found)
        return found

    def send_due(self, limit: int = 20) -> int:
        """Hand the deliveries that are due to the senders (inside a turn: may write secrets)."""
        store = self.core.store
        due = store.webhooks_due(self.core.wall(), limit, self.in_flight)
        for d in due:
            job = store.job(d["job_id"])
            if job is None:
                continue
            body = json.dumps(self.payload(job), separators=(",", ":")).encode()
            self.in_flight.add(d["job_id"])
            self._pool.submit(self._send, d, body, self.secret(job["tenant"]))
        return len(due)

    def payload(self, job: dict[str, Any]) -> dict[str, Any]:
        """What a receiver is told: the job's end state, counts, errors, and where the results are."""
        store = self.core.store
        body = {k: job[k] for k in ("job_id", "state", "tenant", "total", "queued", "running", "done", "failed",
                                    "cancelled", "created", "finished")}
        body["event"] = "job.finished"
        body["errors"] = store.failed_tasks(job["job_id"])
        if self.public_url:
            body["results"] = [{"task_id": tid, "name": name,
                                "url": f"{self.public_url}/v1/jobs/{job['job_id']}/tasks/{tid}/result"}
                               for tid, name in store.done_tasks(job["job_id"])]
        return body

    def _send(self, due: dict[str, Any], body: bytes, secret: str) -> None:
        try:
            error = deliver(due["url"], body, secret, self.allow)
        except Exception as e:  # a bug here must not lose the delivery: it is retried
            log.exception("webhook delivery crashed")
            error = f"internal error: {e}"
        self.core.blobio.post(lambda: self._attempted(due, error))

    def _attempted(self, due: dict[str, Any], error: str) -> None:
        """On the loop: record the attempt (again after a rolled-back turn)."""
        core = self.core
        core.redoable.append(lambda: self._attempted(due, error))
        self.in_flight.discard(due["job_id"])
        retry_at = None
        if error:
            pause = min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** due["attempts"]) * random.uniform(0.5, 1.5)
            if core.wall() + pause - due["first_at"] <= core.config.webhook_retry_s:
                retry_at = core.wall() + pause
            core.warnings.warn("webhook", "webhook for job %s to %s failed (attempt %d): %s",
                               due["job_id"], urlsplit(due["url"]).hostname, due["attempts"] + 1, error)
        core.store.webhook_attempted(due["job_id"], ok=not error, error=error or None, retry_at=retry_at)
        if core.metrics is not None:
            core.metrics.webhook_attempts.labels("failed" if error else "delivered").inc()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
