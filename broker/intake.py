"""Message intake: from a ROUTER message's frames to a handler call.

Who sent it (by the CURVE key ZAP authenticated, never by routing id), whether it is
too large, well formed and allowed for that sender; a refusal is answered, never raised,
and a handler's bug is answered as an internal error instead of stopping the broker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import zmq

from broker import access
from broker.connections import ConnectionWatch
from broker.core import Core
from broker.keys import OPEN, KeyRing, Principal
from broker.store import StoreError
from shared import protocol as p

log = logging.getLogger("cutq.broker")
Handler = Callable[[bytes, Any, Principal], None]
# a frame at least this big (an image) is used where ZeroMQ received it, not copied: the copy
# was most of the loop thread's time on the bytes path (perf: memmove under recv_multipart)
ZERO_COPY_BYTES = 64 * 1024


class Intake:
    """Authenticates, checks and dispatches each message to its handler."""

    def __init__(self, core: Core, handlers: dict[type, Handler], keyring: KeyRing | None,
                 connections: ConnectionWatch | None) -> None:
        self.core = core
        self.handlers = handlers
        self.keyring = keyring
        self.secure = keyring is not None
        self.connections = connections

    def _principal(self, frames: list[Any]) -> Principal | None:
        """Who sent these frames: by the key ZAP authenticated (User-Id), never by routing id."""
        if not self.secure:
            return OPEN
        try:
            user = frames[1].get("User-Id")
        except (IndexError, zmq.ZMQError, AttributeError):
            return None
        return self.keyring.lookup(user) if user and self.keyring else None

    def handle(self, frames: list[Any]) -> None:
        out, warnings = self.core.out, self.core.warnings
        if len(frames) < 2:
            warnings.warn("malformed", "dropped a malformed message: no envelope")
            return
        who = self._principal(frames)
        srcfd = frames[1].get(zmq.SRCFD) if self.secure else None
        frames = [f.bytes if len(f) < ZERO_COPY_BYTES else f.buffer for f in frames]
        ident, body = frames[0], frames[1:]
        size = sum(len(f) for f in body)
        if who is None:
            # a revoked key's connection stays open at the ZeroMQ level: refuse each message
            warnings.warn("refused", "refused a message from an unknown or revoked key on %r", ident[:16])
            out.error(ident, None, "key unknown or revoked", "unauthorized", req=_req_of(body))
            return
        if size > self.core.config.max_message_bytes:
            warnings.warn("too_large", "refused a message of %d bytes from %s (limit %d)",
                          size, who.name, self.core.config.max_message_bytes)
            out.error(ident, None, f"message too large: {size} bytes, limit {self.core.config.max_message_bytes}; "
                      "submit fewer or smaller images per job", "too_large", req=_req_of(body))
            return
        try:
            msg = p.decode(body)
        except p.ProtocolError as e:
            warnings.warn("malformed", "dropped a malformed message from %r: %s", ident[:16], e)
            out.error(ident, None, f"bad message: {e}", "bad_request", req=0)
            return
        if type(msg) not in self.handlers:
            warnings.warn("malformed", "dropped %s from %r: not sent to a broker", type(msg).__name__, ident[:16])
            return
        acting = self._authorise(ident, msg, who)
        if acting is None:
            return
        who = acting
        if srcfd is not None and type(msg) in p.WORKER_MESSAGES and self.connections is not None:
            self.connections.heard(srcfd, ident, who)
        self._run_handler(ident, msg, who)
        if srcfd is not None and isinstance(msg, p.Ready) and self.connections is not None:
            self.connections.heard(srcfd, ident, who)

    def _authorise(self, ident: bytes, msg: p.Message, who: Principal) -> Principal | None:
        """Whom `msg` acts as, if `who` may send it; else None, after a `forbidden` answer."""
        acting: Principal | str = who
        if type(msg) in p.CLIENT_REQUESTS:
            acting = access.acting(who, msg, self.secure)
        why = acting if isinstance(acting, str) else access.refusal(acting, msg, self.secure)
        if why is None and not isinstance(acting, str):
            return acting
        self.core.warnings.warn("refused", "refused %s from %s (%s): %s", type(msg).__name__, who.name, who.role, why)
        if hasattr(msg, "req"):
            self.core.out.error(ident, msg, str(why), "forbidden")
        return None

    def _run_handler(self, ident: bytes, msg: p.Message, who: Principal) -> None:
        out = self.core.out
        try:
            self.handlers[type(msg)](ident, msg, who)
        except StoreError as e:
            if hasattr(msg, "req"):
                out.error(ident, msg, f"storage error, nothing was saved: {e}", "storage")
            raise  # the whole turn is rolled back and answered with errors
        except Exception as e:  # a bug in one handler must not take the broker down
            log.exception("handler for %s failed", type(msg).__name__)
            if hasattr(msg, "req"):
                out.error(ident, msg, f"internal error: {e.__class__.__name__}: {e}", "internal")


def _req_of(body: list[Any]) -> int:
    """The request id of a message we refuse before decoding it fully (0 if unreadable)."""
    try:
        return int(getattr(p.decode(body[:3]), "req", 0))
    except (p.ProtocolError, TypeError, ValueError):
        return 0
