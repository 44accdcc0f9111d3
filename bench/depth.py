"""The broker at depth: a million queued tasks (or --tasks), through the real socket.

  1. submit --tasks one-image-per-task noop tasks (jobs of --per-job distinct tiny images,
     pipelined: shared/pipeline.py), the rate per tenth (per 100k at a million), the broker's
     RSS at 0, a quarter, half and all of it;
  2. reads at that depth: p50/p99 of status (a queued job: position and ETA), stats, list
     (a page of 50) and workers, one at a time over the socket;
  3. restart: SIGINT, start again, seconds until stats answers, and the RSS after;
  4. drain with 2 noop workers at full depth: tasks/s over a window, then the same window
     with one client polling status in a tight loop (its calls/s and p99), then again without;
  5. drain from a shallow queue (a fresh broker, --shallow tasks) for comparison.

    python bench/depth.py --tasks 1000000 --json
    python bench/depth.py --tasks 50000 --window 5        # a quick run
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import REPO, Client, free_port, machine, median, percentile, report

from shared.client import BrokerUnavailable
from shared.pipeline import PipelinedSubmitter

PNG = b"\x89PNG\r\n\x1a\n"


class Daemons:
    """A broker on its own data dir, and workers, as `python -m cli` subprocesses."""

    def __init__(self, data: Path, max_queued: int) -> None:
        self.data, self.max_queued = data, max_queued
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.broker: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def start_broker(self) -> float:
        """Start the broker; seconds until stats answers."""
        t0 = time.perf_counter()
        self.broker = subprocess.Popen(
            [sys.executable, "-m", "cli", "broker", "--bind", self.endpoint, "--data", str(self.data),
             "--max-queued", str(self.max_queued)], env=self.env, stderr=subprocess.DEVNULL)
        with Client(self.endpoint, timeout=1.0) as c:
            while True:
                try:
                    c.stats()
                    return time.perf_counter() - t0
                except BrokerUnavailable:
                    if self.broker.poll() is not None:
                        raise RuntimeError("the broker exited") from None

    def stop_broker(self) -> None:
        assert self.broker is not None
        self.broker.send_signal(signal.SIGINT)
        self.broker.wait(timeout=120)

    def start_workers(self, n: int, slots: int) -> None:
        for i in range(n):
            self.workers.append(subprocess.Popen(
                [sys.executable, "-m", "cli", "worker", "--connect", self.endpoint, "--name", f"depth{i}",
                 "--concurrency", str(slots), "--preload", ""], env=self.env, stderr=subprocess.DEVNULL))
        with Client(self.endpoint, timeout=30) as c:
            while len([w for w in c.workers() if w["state"] == "alive"]) < n:
                time.sleep(0.05)

    def rss_mb(self) -> float:
        assert self.broker is not None
        for line in open(f"/proc/{self.broker.pid}/status"):
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return 0.0

    def close(self) -> None:
        for proc in [*self.workers, self.broker]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in [*self.workers, self.broker]:
            if proc is not None:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _images(start: int, n: int) -> list[tuple[str, bytes]]:
    """`n` distinct tiny images (so each is a new blob, kept in the database)."""
    return [(f"{i}.png", PNG + i.to_bytes(8, "big")) for i in range(start, start + n)]


def submit(d: Daemons, tasks: int, per_job: int, window: int) -> tuple[list[float], dict[str, float], list[str]]:
    """Submit `tasks`; returns the rate per tenth, the RSS at 0/25/50/100 %, and the job ids."""
    tenth = max(1, tasks // 10)
    marks = {0: "0", tasks // 4: "25%", tasks // 2: "50%", tasks: "100%"}
    rss = {"0": d.rss_mb()}
    rates: list[float] = []
    jobs: list[str] = []
    done = 0
    with PipelinedSubmitter(d.endpoint, window=window, timeout=120) as s:
        futures = []
        t_block = time.perf_counter()
        while done < tasks:
            n = min(per_job, tasks - done)
            futures.append(s.submit(_images(done, n), processor="noop"))
            done += n
            crossed = [m for m in marks if done - n < m <= done and m]
            if done // tenth != (done - n) // tenth or crossed:
                s.flush()  # the rate counts acknowledged (durable) tasks only
                if done // tenth != (done - n) // tenth:
                    now = time.perf_counter()
                    rates.append(round(tenth / (now - t_block)))
                    t_block = now
                for m in crossed:
                    rss[marks[m]] = d.rss_mb()
        jobs = [f.result() for f in futures]
    return rates, rss, jobs


def reads(endpoint: str, job: str, n: int) -> dict[str, dict[str, float]]:
    """p50/p99 (ms) of the reads a dashboard and scripts make, one at a time."""
    out: dict[str, dict[str, float]] = {}
    with Client(endpoint, timeout=60) as c:
        calls = {
            "status": lambda: c.status(job, tasks=False),
            "stats": c.stats,
            "list": lambda: c.list_jobs(limit=50),
            "workers": c.workers,
        }
        for name, call in calls.items():
            call()
            ms = []
            for _ in range(n):
                t0 = time.perf_counter()
                call()
                ms.append((time.perf_counter() - t0) * 1000)
            out[name] = {"p50_ms": round(median(ms), 2), "p99_ms": round(percentile(ms, 99), 2)}
    return out


def _poll_status(endpoint: str, job: str, seconds: float, out: Any) -> None:
    """A client polling one job's status as fast as it can."""
    lat = []
    with Client(endpoint, timeout=30) as c:
        end = time.perf_counter() + seconds
        while (t0 := time.perf_counter()) < end:
            c.status(job, tasks=False)
            lat.append(time.perf_counter() - t0)
    out.put(lat)


def drain_rate(endpoint: str, seconds: float) -> float:
    """Tasks finished per second over `seconds` (the workers are already busy)."""
    with Client(endpoint, timeout=60) as c:
        d0, t0 = c.stats()["done"], time.perf_counter()
        time.sleep(seconds)
        return round((c.stats()["done"] - d0) / (time.perf_counter() - t0))


def drain_with_poller(endpoint: str, job: str, seconds: float) -> tuple[float, dict[str, float]]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_poll_status, args=(endpoint, job, seconds + 1.0, out))
    proc.start()
    time.sleep(1.0)  # the poller is connected and polling
    rate = drain_rate(endpoint, seconds)
    lat = out.get(timeout=seconds + 60)
    proc.join()
    return rate, {"calls_per_s": round(len(lat) / (seconds + 1.0)), "p50_ms": round(median(lat) * 1000, 2),
                  "p99_ms": round(percentile(lat, 99) * 1000, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--per-job", type=int, default=1000, help="images per submitted job")
    ap.add_argument("--window", type=float, default=10.0, help="seconds per drain measurement")
    ap.add_argument("--shallow", type=int, default=50_000, help="tasks of the shallow-queue drain")
    ap.add_argument("--slots", type=int, default=256, help="slots per noop worker")
    ap.add_argument("--reads", type=int, default=200, help="calls per read kind")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result: dict[str, Any] = {"bench": "depth", "tasks": args.tasks, "machine": machine(),
                              "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="cutq-depth-") as tmp:
        deep = Daemons(Path(tmp) / "deep", args.tasks + args.shallow)
        try:
            deep.start_broker()
            rates, rss, jobs = submit(deep, args.tasks, args.per_job, window=8)
            result["submit_per_s_by_tenth"] = rates
            result["rss_mb"] = rss
            middle = jobs[len(jobs) // 2]
            result["reads_at_depth"] = reads(deep.endpoint, middle, args.reads)
            deep.stop_broker()
            result["restart_s"] = round(deep.start_broker(), 2)
            result["rss_mb"]["after_restart"] = deep.rss_mb()
            deep.start_workers(2, args.slots)
            time.sleep(1.0)
            plain = drain_rate(deep.endpoint, args.window)
            polled, poller = drain_with_poller(deep.endpoint, jobs[-1], args.window)
            again = drain_rate(deep.endpoint, args.window)
            result["drain_at_depth"] = {"per_s": round((plain + again) / 2), "runs": [plain, again],
                                        "with_status_poller_per_s": polled, "poller": poller}
        finally:
            deep.close()
        shallow = Daemons(Path(tmp) / "shallow", args.shallow + 1)
        try:
            shallow.start_broker()
            submit(shallow, args.shallow, args.per_job, window=8)
            shallow.start_workers(2, args.slots)
            with Client(shallow.endpoint, timeout=60) as c:
                t0, d0 = time.perf_counter(), c.stats()["done"]
                while (d1 := c.stats()["done"]) < args.shallow:
                    time.sleep(0.05)
            result["drain_shallow_per_s"] = round((d1 - d0) / (time.perf_counter() - t0))
        finally:
            shallow.close()
    result["load_after"] = os.getloadavg()
    report(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
