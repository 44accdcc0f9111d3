"""Dashboard frame-time benchmark: a big store and a fast event stream, headless.

    python bench/tui_frames.py                      # 100,000 jobs in memory, 200 events/s
    python bench/tui_frames.py --source broker      # a real broker (SQLite) with 100,000 jobs
    python bench/tui_frames.py --jobs 20000 --rate 400 --seconds 20 --size 80x24

What it measures, while the stream runs (prints one JSON object, times in ms):
  frame     one screen refresh: layout, compositor, and the bytes a terminal would get
  apply     applying one coalesced FeedBatch to the widgets (UI thread)
  latency   event created -> applied on screen (the broker's "t" to the batch handler)
  key       a keypress (cursor down in the jobs table, ~30 a second) until the cursor moved
  page      the next page of jobs (100 rows) asked for, loaded by the feed, and in the table
The memory source serves a synthetic dataset through the same feed code as a broker;
the broker source runs `python -m cli broker` and a noop worker, inserts the
jobs with the client (under a minute for 100,000; they stay queued under a paused
tenant, or with --drain the worker works through them, thousands of events a second),
and keeps ~rate task events a second flowing by submitting small jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from textual.screen import Screen  # noqa: E402

from shared.client import Client  # noqa: E402
from tui.app import CutqApp  # noqa: E402
from tui.feed import FeedConfig, broker_feed  # noqa: E402
from tui.memory import MemorySource, memory_feed, sample_dataset, simulate  # noqa: E402
from tui.widgets.jobs_table import JobsTable  # noqa: E402
from tui.widgets.preview import detect_graphics  # noqa: E402


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"n": len(values), "median": round(statistics.median(ordered), 3), "p99": round(p99, 3),
            "max": round(ordered[-1], 3)}


class FrameTimer:
    """Times every screen refresh, including rendering the update to terminal bytes
    (which a headless app would otherwise skip)."""

    def __init__(self) -> None:
        self.frames: list[float] = []
        self.bytes = 0
        self._orig = Screen._on_timer_update
        timer = self

        def timed(screen: Screen) -> None:
            start = time.perf_counter()
            timer._orig(screen)
            timer.frames.append((time.perf_counter() - start) * 1000)

        Screen._on_timer_update = timed  # type: ignore[method-assign]

    def install(self, app: CutqApp) -> None:
        original_display = app._display
        timer = self

        def display(screen: Screen, renderable: Any) -> None:
            original_display(screen, renderable)
            if renderable is not None and hasattr(renderable, "render_segments"):
                start = time.perf_counter()
                timer.bytes += len(renderable.render_segments(app.console))
                if timer.frames:  # charge the output to the frame being drawn
                    timer.frames[-1] += (time.perf_counter() - start) * 1000

        app._display = display  # type: ignore[method-assign]

    def uninstall(self) -> None:
        Screen._on_timer_update = self._orig  # type: ignore[method-assign]


class BenchApp(CutqApp):
    """The dashboard, recording how old each event is when its batch is applied."""

    latencies: list[float]

    def on_feed_batch(self, message) -> None:  # type: ignore[no-untyped-def]
        # Textual runs this, then CutqApp.on_feed_batch (handlers run along the MRO)
        now = time.time()
        self.latencies.extend((now - ev["t"]) * 1000 for ev in message.events if ev.get("t"))


async def until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise SystemExit("timed out")
        await asyncio.sleep(0.0005)


async def measure(app: BenchApp, timer: FrameTimer, size: tuple[int, int], seconds: float,
                  warmup: float) -> dict[str, Any]:
    app.latencies = []
    keys: list[float] = []
    pages: list[float] = []
    async with app.run_test(size=size) as pilot:
        timer.install(app)
        await until(lambda: {"stats", "workers", "jobs"} <= app.loaded, 60)
        await pilot.pause(warmup)
        timer.frames.clear()
        app.latencies.clear()
        app.batch_ms.clear()
        table = app.overview.query_one(JobsTable)
        events_before = app.events_seen
        start = time.monotonic()
        end = start + seconds
        while time.monotonic() < end:
            if table.cursor_row >= table.row_count - 1:  # next page, as a user scrolling down would
                old = app.jobs_page
                t0 = time.perf_counter()
                app.simulate_key("right_square_bracket")
                await until(lambda old=old: app.jobs_page is not old and table.row_count and table.cursor_row == 0)
                pages.append((time.perf_counter() - t0) * 1000)
            row = table.cursor_row
            t0 = time.perf_counter()
            app.simulate_key("down")
            await until(lambda row=row: table.cursor_row != row)
            keys.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.03)  # a fast typist: ~30 keys a second
        elapsed = time.monotonic() - start
        events = app.events_seen - events_before
        batches = list(app.batch_ms)
        frames = list(timer.frames)
        latencies = list(app.latencies)
    timer.uninstall()
    return {
        "size": f"{size[0]}x{size[1]}", "seconds": round(elapsed, 1), "events": events,
        "events_per_s": round(events / elapsed, 1), "batches": len(batches), "frames": len(frames),
        "frames_per_s": round(len(frames) / elapsed, 1), "bytes_per_s": round(timer.bytes / elapsed),
        "frame_ms": summary(frames), "apply_ms": summary(batches), "latency_ms": summary(latencies),
        "key_ms": summary(keys), "page_ms": summary(pages),
    }


def run_memory(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    source = MemorySource(sample_dataset(time.time(), jobs=args.jobs))
    built = time.perf_counter() - t0
    # The dataset stands in for the broker's store, which lives in another process: keep
    # its 100,000 dicts out of the dashboard's garbage collections.
    gc.collect()
    gc.freeze()
    stop = threading.Event()
    threading.Thread(target=simulate, args=(source, float(args.rate), stop), daemon=True).start()
    try:
        timer = FrameTimer()  # before the app exists: screens bind their refresh callback at creation
        app = BenchApp(memory_feed(source, FeedConfig(workers_resync=0)))
        result = asyncio.run(measure(app, timer, args.size, args.seconds, args.warmup))
    finally:
        stop.set()
    t0 = time.perf_counter()
    source.list_jobs(search="zzz", limit=100)
    return {"source": "memory", "jobs": args.jobs, "rate": args.rate, "dataset_s": round(built, 2),
            "memory_search_ms": round((time.perf_counter() - t0) * 1000, 1), **result}


def run_broker(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="cutq-bench-"))
    port = 47000 + os.getpid() % 1000
    endpoint = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "cli"]
    procs = [subprocess.Popen([*cli, "broker", "--bind", endpoint, "--data", str(tmp / "data"),
                               "--synchronous", "NORMAL"], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(tmp / "broker.log", "wb"))]
    stop = threading.Event()
    try:
        client = Client(endpoint, timeout=10)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.stats()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        have = client.stats()["jobs"]
        if not args.drain:  # the stored jobs stay queued; only the live stream is worked on
            client.pause(True, tenant="bulk")
        t0 = time.perf_counter()
        for i in range(have, args.jobs):
            client.submit([(f"img{i}.png", b"\x89PNG tiny")], processor="noop", tenant="bulk")
            if i % 10_000 == 0 and i:
                print(f"  inserted {i} jobs", file=sys.stderr)
        insert_s = time.perf_counter() - t0
        timings = {}
        for label, kw in (("first_page", {}), ("middle_page", {"offset": args.jobs // 2}),
                          ("search_name", {"search": "img4242"}), ("filter_done", {"state": "done"})):
            t0 = time.perf_counter()
            client.list_jobs(limit=100, **kw)
            timings[label] = round((time.perf_counter() - t0) * 1000, 1)
        procs.append(subprocess.Popen([*cli, "worker", "--connect", endpoint, "--concurrency", "4", "--preload", ""],
                                      env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "worker.log", "wb")))

        def feeder() -> None:  # ~rate task events a second: each task is a running and a done event
            c = Client(endpoint, timeout=10)
            per = max(1, int(args.rate / 2 / 10))
            while not stop.wait(0.1):
                c.submit([(f"live{k}.png", b"\x89PNG tiny") for k in range(per)], processor="noop")
            c.close()

        threading.Thread(target=feeder, daemon=True).start()
        timer = FrameTimer()
        app = BenchApp(broker_feed(endpoint))
        result = asyncio.run(measure(app, timer, args.size, args.seconds, args.warmup))
        return {"source": "broker", "jobs": args.jobs, "rate": "drain" if args.drain else args.rate,
                "insert_s": round(insert_s, 1),
                "list_jobs_ms": timings, **result}
    finally:
        stop.set()
        for p in reversed(procs):
            p.terminate()
            p.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("memory", "broker"), default="memory")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=200, help="task events per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--size", default="160x48", type=lambda s: tuple(int(v) for v in s.split("x")))
    parser.add_argument("--drain", action="store_true",
                        help="broker source: let the worker process the stored jobs too (thousands of events/s)")
    args = parser.parse_args()
    detect_graphics(force="halfcell")
    result = run_memory(args) if args.source == "memory" else run_broker(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
