"""Test harness: real broker and worker processes on real sockets, and condition waits.

Every daemon is a `python -m cli ...` subprocess, exactly what a user runs;
tests talk to them through shared.client over TCP on a free loopback port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.client import BrokerUnavailable, Client
from shared.security import Credentials

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll `condition` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except BrokerUnavailable as e:
            last_error = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}" +
                         (f" (last error: {last_error})" if last_error else ""))


class Cluster:
    """A broker and any number of workers, started and stopped by a test."""

    def __init__(self, tmp: Path, heartbeat: float = 0.25, liveness: int = 3) -> None:
        self.tmp = tmp
        self.data = tmp / "data"
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.heartbeat, self.liveness = heartbeat, liveness
        self.broker: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self._clients: list[Client] = []
        self.credentials: Credentials | None = None  # with CURVE on: the key client() connects with
        self.env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def _spawn(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        with open(self.tmp / f"{name}.log", "ab") as log:  # the child keeps its own copy of the file
            return subprocess.Popen([sys.executable, "-m", "cli", *args], stdout=log, stderr=subprocess.STDOUT,
                                    env=env or self.env, cwd=self.tmp)

    def start_broker(self, *extra: str, wait: bool = True) -> subprocess.Popen:
        self.broker = self._spawn("broker", [
            "broker", "--bind", self.endpoint, "--data", str(self.data),
            "--heartbeat", str(self.heartbeat), "--liveness", str(self.liveness), *extra,
        ])
        if wait:
            c = self.client(timeout=1.0)
            wait_for(lambda: c.stats() is not None, 20, what="broker to answer")
        return self.broker

    def start_worker(self, concurrency: int = 1, *extra: str, name: str | None = None,
                     env: dict | None = None) -> subprocess.Popen:
        name = name or f"w{len(self.workers)}"
        proc = self._spawn(f"worker-{name}", [
            "worker", "--connect", self.endpoint, "--concurrency", str(concurrency), "--name", name,
            "--heartbeat", str(self.heartbeat), "--liveness", str(self.liveness), *extra,
        ], env=env)
        self.workers.append(proc)
        return proc

    def wait_workers(self, n: int, timeout: float = 30.0) -> list[dict]:
        c = self.client()
        return wait_for(lambda: (ws := [w for w in c.workers() if w["state"] == "alive"]) and len(ws) >= n and ws,
                        timeout, what=f"{n} workers")

    def client(self, timeout: float = 10.0, credentials: Credentials | None = None) -> Client:
        c = Client(self.endpoint, timeout=timeout, credentials=credentials or self.credentials)
        self._clients.append(c)
        return c

    def cli(self, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the real `cutq` command line against this cluster."""
        return subprocess.run([sys.executable, "-m", "cli", *args, "--connect", self.endpoint],
                              capture_output=True, text=True, env=self.env, timeout=timeout, check=check,
                              cwd=self.tmp)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.tmp.glob("*.log"))

    @staticmethod
    def kill9(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self) -> None:
        for c in self._clients:
            c.close()
        procs = [p for p in [*self.workers, self.broker] if p is not None and p.poll() is None]
        for p in procs:
            p.send_signal(signal.SIGINT)  # workers: drain; broker: clean stop
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        # slot processes of SIGKILLed workers are orphans holding nothing; reap by pattern is not
        # needed: they exit when their pipe closes


def sample_photo(name: str) -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / name


def model_available() -> bool:
    home = Path(os.environ.get("U2NET_HOME") or Path.home() / ".u2net")
    return (home / "u2netp.onnx").exists()
