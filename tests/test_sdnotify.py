"""shared.sdnotify against real AF_UNIX datagram sockets: the exact bytes systemd would read."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.sdnotify import Notifier


def _bind(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


def _drain(sock: socket.socket) -> list[bytes]:
    """Every datagram queued on ``sock`` right now (sends to AF_UNIX are synchronous)."""
    got = []
    sock.setblocking(False)
    try:
        while True:
            got.append(sock.recv(4096))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2.0)
    return got


@pytest.fixture
def sock_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for sockets: tmp_path, or a short one when tmp_path is too long.

    AF_UNIX paths are limited to 107 bytes and pytest's tmp_path can be longer.
    """
    if len(str(tmp_path)) <= 80:
        yield tmp_path
        return
    short = Path(tempfile.mkdtemp(prefix="cutq-sd-"))
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def listener(sock_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(sock_dir / "notify.sock")
    sock = _bind(path)
    yield sock, path
    sock.close()


def test_path_socket_gets_exact_datagrams(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled
    n.ready()
    n.status("3 workers, 12 queued")
    n.stopping()
    assert _drain(sock) == [b"READY=1", b"STATUS=3 workers, 12 queued", b"STOPPING=1"]
    n.close()


def test_status_newlines_cannot_inject_assignments(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    n.status("draining\nREADY=1")
    assert _drain(sock) == [b"STATUS=draining READY=1"]
    n.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux-only")
def test_abstract_namespace_socket() -> None:
    name = f"cutq-test-{uuid.uuid4().hex}"
    sock = _bind(b"\0" + name.encode())
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        n.ready()
        n.status("ok")
        assert _drain(sock) == [b"READY=1", b"STATUS=ok"]
        n.close()
    finally:
        sock.close()


def test_watchdog_rate_limited_to_half_the_interval(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    n = Notifier.from_env(env)
    assert n.watchdog_interval == 10.0

    n.watchdog(100.0)
    assert _drain(sock) == [b"WATCHDOG=1"]
    for t in (100.0, 101.0, 104.999):  # within 5 s of the last ping: nothing
        n.watchdog(t)
    assert _drain(sock) == []
    n.watchdog(105.0)
    assert _drain(sock) == [b"WATCHDOG=1"]
    n.watchdog(109.0)
    assert _drain(sock) == []
    n.watchdog(112.0)  # the limit runs from the last ping sent (105), not the last call
    assert _drain(sock) == [b"WATCHDOG=1"]
    n.close()


def test_watchdog_silent_when_not_armed(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.watchdog_interval is None
    n.watchdog(0.0)
    n.watchdog(1000.0)
    n.ready()
    assert _drain(sock) == [b"READY=1"]
    n.close()


@pytest.mark.parametrize(
    "extra",
    [
        {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"},  # armed for another process
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "ten"},
        {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "x"},
    ],
)
def test_watchdog_env_not_for_us(listener: tuple[socket.socket, str], extra: dict[str, str]) -> None:
    sock, path = listener
    if extra.get("WATCHDOG_PID") == str(os.getpid()):
        pytest.skip("running as pid 1")
    n = Notifier.from_env({"NOTIFY_SOCKET": path, **extra})
    assert n.watchdog_interval is None
    n.watchdog(0.0)
    assert _drain(sock) == []
    n.close()


def test_watchdog_without_pid_is_ours(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    assert n.watchdog_interval == 2.0
    n.watchdog(0.0)
    n.watchdog(0.5)
    n.watchdog(1.0)
    assert _drain(sock) == [b"WATCHDOG=1", b"WATCHDOG=1"]
    n.close()


def test_noop_without_notify_socket() -> None:
    n = Notifier.from_env({"WATCHDOG_USEC": "10000000"})
    assert not n.enabled
    assert n.watchdog_interval is None
    n.ready()
    n.status("x")
    n.watchdog(0.0)
    n.stopping()
    n.close()


def test_relative_notify_socket_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.sdnotify"):
        n = Notifier.from_env({"NOTIFY_SOCKET": "relative.sock"})
    assert not n.enabled
    assert "NOTIFY_SOCKET" in caplog.text
    n.ready()


def test_missing_socket_never_raises_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = Notifier.from_env(
        {"NOTIFY_SOCKET": str(tmp_path / "gone.sock"), "WATCHDOG_USEC": "1000000"}
    )
    with caplog.at_level(logging.WARNING, logger="shared.sdnotify"):
        n.ready()
        n.status("still fine")
        n.watchdog(0.0)
        n.watchdog(10.0)
        n.stopping()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "READY" in warnings[0].getMessage()
    n.close()


def test_listener_appearing_later_is_reached(sock_dir: Path) -> None:
    """A failed send does not disable the notifier: systemd may come back."""
    path = sock_dir / "late.sock"
    n = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    n.ready()  # nobody listening yet
    sock = _bind(str(path))
    try:
        n.status("up")
        assert _drain(sock) == [b"STATUS=up"]
    finally:
        sock.close()
        n.close()
