"""The broker's socket: how it is bound, and with CURVE, which connection each worker speaks on.

Another key can take a worker's routing id the moment the worker's connection
closes; until the worker's own key is heard again on a new connection, it gets no
dispatch.  Without CURVE there is nothing to watch.
"""

from __future__ import annotations

import logging

import zmq
import zmq.auth
import zmq.utils.monitor

from broker.keys import Principal, broker_cert_paths
from broker.registry import Registry
from shared.config import BrokerConfig
from shared.security import is_local_endpoint

log = logging.getLogger("cutq.broker")


class BrokerSetupError(Exception):
    """The broker cannot start as configured (one line for the user)."""


def bind_router(ctx: zmq.Context[zmq.Socket[bytes]], config: BrokerConfig, secure: bool) -> zmq.Socket[bytes]:
    """The broker's one ROUTER socket, bound, with CURVE when the data dir has keys."""
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.LINGER, 1000)
    s.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a departed peer raises, never drops silently
    # a reconnecting worker keeps its identity; with CURVE, nobody may take over another's
    s.setsockopt(zmq.ROUTER_HANDOVER, 0 if secure else 1)
    # the whole message's cap is checked on receipt, so an oversized submission gets a
    # too_large answer; a single frame past twice the cap is hostile: libzmq drops its connection
    s.setsockopt(zmq.MAXMSGSIZE, 2 * config.max_message_bytes)
    s.setsockopt(zmq.SNDHWM, config.sndhwm)
    s.setsockopt(zmq.RCVHWM, config.rcvhwm)
    # ZMTP heartbeats drop dead TCP connections, so a worker's identity frees up after a cut
    s.setsockopt(zmq.HEARTBEAT_IVL, 1000)
    s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
    if secure:
        public, secret = zmq.auth.load_certificate(broker_cert_paths(config.data_dir)[1])
        s.curve_secretkey, s.curve_publickey = secret, public
        s.curve_server = True
    elif not is_local_endpoint(config.bind):
        log.warning("binding %s WITHOUT CURVE (--insecure): traffic is plaintext and unauthenticated",
                    config.bind)
    try:
        s.bind(config.bind)
    except zmq.ZMQError as e:
        s.close(0)
        raise BrokerSetupError(f"cannot bind {config.bind}: {e.strerror}") from e
    return s



class ConnectionWatch:
    """Maps connection fds to the worker last heard on them; acts on disconnect events."""

    def __init__(self, sock: zmq.Socket[bytes], registry: Registry) -> None:
        self.sock = sock
        self.registry = registry
        self.monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._worker_fds: dict[int, bytes] = {}  # connection fd -> routing id of the worker last heard on it
        self._disconnected: set[bytes] = set()  # workers whose connection closed: no dispatch until heard again

    def poll_disconnects(self) -> None:
        """A worker whose connection closed takes nothing new until its own key is heard again."""
        while True:
            try:
                frames = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                event = zmq.utils.monitor.parse_monitor_message(frames)
            except Exception:  # not ours to crash on
                continue
            ident = self._worker_fds.pop(event["value"], None)
            w = self.registry.get_alive(ident) if ident is not None else None
            if w is not None and not w.draining:
                # its routing id may be someone else's by now: dispatch nothing more to it until
                # its own key speaks on a new connection; else the heartbeat timeout re-queues its tasks
                log.warning("worker %s's connection closed; no dispatch to it until it is heard again", w.name)
                w.draining = True
                self._disconnected.add(w.ident)

    def heard(self, fd: int, ident: bytes, who: Principal) -> None:
        """Note the connection a worker's own key spoke on; a worker cut off by a closed connection is back."""
        w = self.registry.get_alive(ident)
        if w is None or w.user != who.name:
            return
        self._worker_fds[fd] = ident
        if ident in self._disconnected:
            self._disconnected.discard(ident)
            w.draining = False
            log.info("worker %s is back on a new connection", w.name)

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(0)
