"""The gateway's way to the broker: Clients that act for a tenant, from a small pool.

A zmq socket must not be shared between threads, and FastAPI runs each request in a
thread of its pool: a request borrows a Client for its duration (no two threads ever
hold the same one) and gives it back for the next.  All Clients share one zmq.Context,
which is thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import zmq

from gateway.settings import GatewaySettings
from shared import protocol as p
from shared.client import Client


class TenantClient(Client):
    """A Client whose every message names `as_tenant` (None: none, as an admin asks).

    The broker then treats a gateway key (or, in open mode, anyone) exactly as a client key
    of that tenant.  Set here, on the one path every message takes out (`_send`), so the
    streamed upload's parts and the event stream's lease renewals carry it too."""

    as_tenant: str | None = None

    def _send(self, msg: p.Message, timeout: float) -> int:
        msg.as_tenant = self.as_tenant
        return super()._send(msg, timeout)


class BrokerPool:
    """Idle TenantClients kept for reuse; `borrow` hands one to a single thread at a time."""

    def __init__(self, settings: GatewaySettings, context: zmq.Context[Any] | None = None) -> None:
        self.settings = settings
        self.context: zmq.Context[Any] = context or zmq.Context()
        self._idle: list[TenantClient] = []
        self._lock = threading.Lock()
        self._closed = False

    def new_client(self, as_tenant: str | None, timeout: float | None = None) -> TenantClient:
        """A Client of its own (not pooled): the caller closes it."""
        client = TenantClient(self.settings.connect, timeout=self.settings.timeout if timeout is None else timeout,
                              context=self.context, credentials=self.settings.credentials)
        client.as_tenant = as_tenant
        return client

    @contextmanager
    def borrow(self, as_tenant: str | None, timeout: float | None = None) -> Iterator[TenantClient]:
        """A Client acting for `as_tenant`, this thread's alone until the block ends."""
        with self._lock:
            client = self._idle.pop() if self._idle else None
        if client is None:
            client = self.new_client(as_tenant)
        client.as_tenant = as_tenant
        client.timeout = self.settings.timeout if timeout is None else timeout
        reusable = True
        try:
            yield client
        except zmq.ZMQError:  # the socket itself failed: do not hand it on
            reusable = False
            raise
        finally:
            # any other ending leaves the Client usable: a late reply to an abandoned request is
            # dropped by req id, and a timeout has already made it reconnect (Lazy Pirate)
            client.as_tenant = None
            with self._lock:
                keep = reusable and not self._closed and len(self._idle) < self.settings.pool_size
                if keep:
                    self._idle.append(client)
            if not keep:
                client.close()

    def close(self) -> None:
        """Close the idle Clients; those still lent are closed as they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for client in idle:
            client.close()
        # the context is not terminated: an event stream's thread may still hold a socket, and
        # term() would wait for it; the process is ending, which releases everything
