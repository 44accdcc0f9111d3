"""The real daemons speak systemd's notify protocol: READY=1 once serving, WATCHDOG=1 from
their loops, STOPPING=1 on SIGTERM, to a NOTIFY_SOCKET datagram socket this test opens."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from tests.cluster import Cluster


def _datagrams(sock: socket.socket, until: float, stop_at: bytes | None = None) -> list[bytes]:
    got: list[bytes] = []
    while time.monotonic() < until and (stop_at is None or stop_at not in got):
        sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            got.append(sock.recv(4096))
        except socket.timeout:
            break
    return got


@pytest.mark.parametrize("daemon", ["broker", "worker"])
def test_daemon_notifies_ready_watchdog_and_stopping(cluster: Cluster, tmp_path, daemon):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    env = {**cluster.env, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    try:
        if daemon == "broker":
            proc = cluster._spawn("broker", ["broker", "--bind", cluster.endpoint, "--data", str(cluster.data)], env=env)
            cluster.broker = proc
        else:
            cluster.start_broker()
            proc = cluster.start_worker(1, "--preload", "", env=env)
        sock.settimeout(30)
        first = sock.recv(4096)
        assert first == b"READY=1"
        if daemon == "broker":
            assert cluster.client(timeout=2).stats() is not None  # READY meant serving
        pings = [d for d in _datagrams(sock, time.monotonic() + 1.5) if d == b"WATCHDOG=1"]
        assert len(pings) >= 3, pings  # at least every WATCHDOG_USEC/2
        proc.send_signal(signal.SIGTERM)
        rest = _datagrams(sock, time.monotonic() + 10, stop_at=b"STOPPING=1")
        assert b"STOPPING=1" in rest
        assert proc.wait(timeout=15) == 0
    finally:
        sock.close()
