"""The real daemons speak systemd's notify protocol to a NOTIFY_SOCKET datagram socket this
test opens: READY=1 once serving, WATCHDOG=1 from their loops at least every half
WATCHDOG_USEC (whatever their heartbeat interval, and while a worker waits to reconnect),
STOPPING=1 on SIGTERM, then exit 0."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from tests.cluster import Cluster, free_port

WATCHDOG_USEC = 500_000
WATCHDOG_S = WATCHDOG_USEC / 1e6


@pytest.fixture
def notify_socket(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


def _env(cluster: Cluster, sock: socket.socket) -> dict:
    return {**cluster.env, "NOTIFY_SOCKET": sock.getsockname(), "WATCHDOG_USEC": str(WATCHDOG_USEC)}


def _receive(sock: socket.socket, seconds: float, stop_at: bytes | None = None) -> list[tuple[float, bytes]]:
    """(arrival time, datagram) for `seconds`, or until `stop_at` arrives."""
    got: list[tuple[float, bytes]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except TimeoutError:
            break
        got.append((time.monotonic(), data))
        if data == stop_at:
            break
    return got


def _check_watchdog(sock: socket.socket, seconds: float) -> None:
    """WATCHDOG=1 keeps coming, never more than WATCHDOG_USEC apart (systemd's deadline)."""
    start = time.monotonic()
    pings = [t for t, d in _receive(sock, seconds) if d == b"WATCHDOG=1"]
    assert len(pings) >= seconds / WATCHDOG_S, pings
    gaps = [b - a for a, b in zip([start, *pings[:-1]], pings, strict=True)]
    print(f"watchdog: {len(pings)} pings in {seconds}s, longest gap {max(gaps):.3f}s")
    assert max(gaps) < WATCHDOG_S, f"a {max(gaps):.3f}s gap: systemd would have killed the daemon"


def _stop(proc, sock: socket.socket) -> None:
    proc.send_signal(signal.SIGTERM)
    assert b"STOPPING=1" in [d for _, d in _receive(sock, 15, stop_at=b"STOPPING=1")]
    assert proc.wait(timeout=15) == 0


def test_broker_notifies_ready_when_serving_watchdog_and_stopping(cluster: Cluster, notify_socket):
    # the default 1 s heartbeat: the watchdog must not depend on it
    cluster.broker = cluster._spawn("broker", ["broker", "--bind", cluster.endpoint, "--data", str(cluster.data)],
                                    env=_env(cluster, notify_socket))
    notify_socket.settimeout(30)
    assert notify_socket.recv(4096) == b"READY=1"
    answered = time.monotonic()
    assert cluster.client(timeout=1.0).stats()["queued"] == 0  # READY meant serving: it answers at once
    assert time.monotonic() - answered < 1.0
    _check_watchdog(notify_socket, 2.0)
    _stop(cluster.broker, notify_socket)


def test_worker_notifies_ready_watchdog_and_stopping(cluster: Cluster, notify_socket):
    cluster.start_broker()
    worker = cluster.start_worker(1, "--preload", "", "--heartbeat", "1.0", "--liveness", "3",
                                  env=_env(cluster, notify_socket))
    notify_socket.settimeout(30)
    assert notify_socket.recv(4096) == b"READY=1"
    cluster.wait_workers(1)
    _check_watchdog(notify_socket, 2.0)
    _stop(worker, notify_socket)


def test_worker_keeps_the_watchdog_fed_while_the_broker_is_away(cluster: Cluster, notify_socket):
    """No broker at all: the worker backs off ever longer between reconnects (0.25 s doubling)
    and must still ping, or systemd would restart every worker during a broker outage."""
    cluster.endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    worker = cluster.start_worker(1, "--preload", "", env=_env(cluster, notify_socket))
    notify_socket.settimeout(30)
    assert notify_socket.recv(4096) == b"READY=1"
    _check_watchdog(notify_socket, 5.0)  # long enough for reconnect pauses of 1 s and more
    assert "reconnecting in" in (cluster.tmp / "worker-w0.log").read_text()
    _stop(worker, notify_socket)
