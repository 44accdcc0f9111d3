"""systemd's notify protocol (``sd_notify(3)``), stdlib only.

A service started with ``Type=notify`` gets ``NOTIFY_SOCKET`` in its environment: a
filesystem path or, with a leading ``@``, a Linux abstract-namespace name, of an
``AF_UNIX``/``SOCK_DGRAM`` socket. The service sends newline-separated ``KEY=value``
datagrams to it: ``READY=1`` once it serves, ``STATUS=...`` for ``systemctl status``,
``STOPPING=1`` when it starts shutting down, and with ``WatchdogSec=`` set,
``WATCHDOG=1`` more often than ``WATCHDOG_USEC`` microseconds or systemd kills it.

:class:`Notifier` is built from an environment mapping (``Notifier.from_env(os.environ)``;
tests pass a dict) and is a no-op when ``NOTIFY_SOCKET`` is unset, so daemons call it
unconditionally. A send that fails (socket gone, systemd restarting) is logged once as
a warning and otherwise ignored: notification must never take a daemon down.

``watchdog(now)`` takes the caller's monotonic time so a daemon can call it from every
loop turn (it rate-limits itself to one datagram per half interval, and sends nothing
unless systemd armed a watchdog) and tests control time without sleeping.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

__all__ = ["Notifier"]


def _parse_address(raw: str) -> str | bytes | None:
    """Turn ``NOTIFY_SOCKET`` into a ``sendto`` address; None when unusable.

    ``@name`` is the abstract namespace (a leading NUL byte on the wire); anything else
    must be an absolute path. (``vsock:`` addresses, used by VMs, are not supported.)
    """
    if raw.startswith("@") and len(raw) > 1:
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None


def _parse_watchdog_usec(env: Mapping[str, str]) -> int | None:
    """``WATCHDOG_USEC`` if it is meant for this process, else None.

    Like ``sd_watchdog_enabled(3)``: ignored unless a positive integer, and ignored
    when ``WATCHDOG_PID`` is set to a pid other than ours (the variable leaked to a child).
    """
    raw = env.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid_raw = env.get("WATCHDOG_PID")
    if pid_raw:
        try:
            if int(pid_raw) != os.getpid():
                return None
        except ValueError:
            return None
    return usec


class Notifier:
    """Sends sd_notify datagrams to ``NOTIFY_SOCKET``; every method is a no-op without one."""

    def __init__(self, address: str | bytes | None, watchdog_usec: int | None = None) -> None:
        """Build directly; ``address`` as for ``sendto`` (path, or ``b"\\0name"``), or None."""
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._last_watchdog: float | None = None
        self._warned = False
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from ``env``."""
        raw = env.get("NOTIFY_SOCKET", "")
        address = _parse_address(raw) if raw else None
        if raw and address is None:
            log.warning("ignoring NOTIFY_SOCKET=%r: not an absolute path or @abstract name", raw)
        return cls(address, _parse_watchdog_usec(env) if address is not None else None)

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """systemd's watchdog timeout in seconds, or None when no watchdog is armed."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 1_000_000

    def ready(self) -> None:
        """Tell systemd start-up is finished (``READY=1``)."""
        self._send("READY=1")

    def stopping(self) -> None:
        """Tell systemd the service is shutting down (``STOPPING=1``)."""
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        """Set the one-line status ``systemctl status`` shows (``STATUS=...``)."""
        # A newline would start a new KEY=value assignment in the datagram.
        self._send("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self, now: float) -> None:
        """Send ``WATCHDOG=1``, at most once per half watchdog interval.

        ``now`` is the caller's ``time.monotonic()``; safe to call on every loop turn.
        A no-op unless a watchdog is armed for this process (``WATCHDOG_USEC`` set and
        ``WATCHDOG_PID``, if present, naming us), like ``sd_watchdog_enabled(3)``.
        """
        interval = self.watchdog_interval
        if self._address is None or interval is None:
            return
        if self._last_watchdog is not None and now - self._last_watchdog < interval / 2:
            return
        self._last_watchdog = now
        self._send("WATCHDOG=1")

    def close(self) -> None:
        """Close the sending socket (a later send opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self._address)
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warning("sd_notify %s to %r failed: %s (further failures not logged)",
                            message.split("=", 1)[0], self._address, e)
