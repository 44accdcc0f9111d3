"""Benchmark harness: start a real broker and workers as subprocesses, stop them after."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shared.client import BrokerUnavailable, Client  # noqa: E402


def machine() -> str:
    """A one-line description of this machine, for quoting next to a number."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    """A started broker: where to reach it, where its data dir is, and its pid."""

    endpoint: str
    data: Path
    broker_pid: int


@contextmanager
def cluster(workers: int, worker_args: list[str], broker_args: Sequence[str] = ()) -> Iterator[str]:
    """Yield the endpoint of a fresh broker (temp data dir) with `workers` workers attached."""
    with started(workers, worker_args, broker_args) as running:
        yield running.endpoint


@contextmanager
def started(workers: int, worker_args: list[str], broker_args: Sequence[str] = (),
            parent: Path | None = None) -> Iterator[Running]:
    """A fresh broker with its data dir in a temp dir under `parent` (default: the system's) and
    `workers` workers attached; all stopped on exit."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "cli"]
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="cutq-bench-", dir=parent) as tmp:
        data = Path(tmp) / "data"
        try:
            procs.append(subprocess.Popen([*cmd, "broker", "--bind", endpoint, "--data", str(data), *broker_args],
                                          env=env, stderr=subprocess.DEVNULL))
            with Client(endpoint, timeout=1.0) as c:
                deadline = time.monotonic() + 20
                while True:
                    try:
                        c.stats()
                        break
                    except BrokerUnavailable:
                        if time.monotonic() > deadline:
                            raise
            for i in range(workers):
                procs.append(subprocess.Popen([*cmd, "worker", "--connect", endpoint, "--name", f"bench{i}",
                                               *worker_args], env=env, stderr=subprocess.DEVNULL))
            with Client(endpoint) as c:
                deadline = time.monotonic() + 60
                while len([w for w in c.workers() if w["state"] == "alive"]) < workers:
                    if time.monotonic() > deadline:
                        raise RuntimeError("workers did not join")
                    time.sleep(0.05)
            yield Running(endpoint, data, procs[0].pid)
        finally:
            for p in reversed(procs):
                p.send_signal(signal.SIGINT)
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()


def report(result: dict, as_json: bool) -> None:
    """A benchmark's result on stdout: one JSON line, or `key: value` lines."""
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]
