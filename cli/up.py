"""`cutq up`: a broker, N local workers and the dashboard in one command.

Starts the daemons as child processes of this one, submits the sample photos that
scikit-image ships, runs the dashboard (or watches the job with --no-tui), and stops
every child when it returns.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from shared.client import BrokerUnavailable, Client

SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")


def sample_photos() -> list[Path]:
    """The real photos scikit-image ships (a rembg dependency), or [] if it is absent."""
    try:
        import skimage
    except ImportError:
        return []
    data = Path(skimage.__file__).parent / "data"
    return [data / name for name in SAMPLE_PHOTOS if (data / name).exists()]


def _wait_for_broker(endpoint: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with Client(endpoint, timeout=1.0) as client:
        while True:
            try:
                client.stats()
                return
            except BrokerUnavailable:
                if time.monotonic() > deadline:
                    raise


def local_endpoint(bind: str) -> str:
    """Where this machine reaches a broker bound on `bind` (tcp://*:5555 -> tcp://127.0.0.1:5555)."""
    for wildcard in ("://*:", "://0.0.0.0:"):
        bind = bind.replace(wildcard, "://127.0.0.1:")
    return bind.replace("://[::]:", "://[::1]:")


def up(args: argparse.Namespace) -> int:
    """Run the whole system locally until the dashboard (or the watch) ends."""
    cutq = [sys.executable, "-m", "cli"]
    connect = local_endpoint(args.bind)
    log_dir = Path(args.data) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    children: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, argv: list[str]) -> None:
        log = open(log_dir / f"{name}.log", "ab")
        children.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    try:
        spawn("broker", [*cutq, "broker", "--bind", args.bind, "--data", args.data])
        _wait_for_broker(connect, 15.0)
        for i in range(args.workers):
            spawn(f"worker-{i}", [*cutq, "worker", "--connect", connect, "--concurrency", "1",
                                  "--name", f"local-{i}"])
        print(f"cutq up: broker on {args.bind}, {args.workers} worker(s), logs in {log_dir}", file=sys.stderr)
        job_id = None
        photos = [] if args.no_samples else sample_photos()
        if photos:
            with Client(connect) as client:
                job_id = client.submit_paths(photos)
            print(f"cutq up: submitted {len(photos)} sample photos as job {job_id}", file=sys.stderr)
        if args.no_tui:
            from cli.main import main

            return main(["watch", job_id, "--connect", connect]) if job_id else 0
        from tui.app import run

        run(connect)
        return 0
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
