"""Per-request cost: one-image noop submissions against a floor, and the noop round trip.

The floor is the least any durable queue on this machine can do per submission: a bare
ROUTER that, per turn, reads every waiting message, INSERTs one row for each into SQLite
(WAL, synchronous=FULL, like the broker) and commits once (group commit), then answers.
It runs side by side with cutq, in the same run, with the same clients (shared.client's
`Client.submit`, one tiny distinct image per submission, so every one is a new blob), 1
and 4 synchronous clients, each its own process.  cutq's figure is its submissions/s
divided by the floor's.  Then the noop round trip: submit one image, wait for the pushed
"job done" event (a worker with `--concurrency 1`, noop answered inline).

    python bench/requests.py --json
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import Client, cluster, free_port, machine, median, percentile, report

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------- the floor


def serve_floor(endpoint: str, data: str) -> None:
    """A bare ROUTER with one SQLite insert per request and one commit per turn."""
    import msgpack
    import zmq

    from shared import protocol as p

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.bind(endpoint)
    db = sqlite3.connect(os.path.join(data, "floor.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, created REAL, name TEXT, size INTEGER)")
    while True:
        sock.poll(500)
        answers = []
        for _ in range(2000):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            body = msgpack.unpackb(frames[3], raw=False)
            if not answers:
                db.execute("BEGIN IMMEDIATE")
            cur = db.execute("INSERT INTO jobs (created, name, size) VALUES (?, ?, ?)",
                             (time.time(), body["names"][0], len(frames[4])))
            answers.append((frames[0], body["req"], cur.lastrowid))
        if answers:
            db.execute("COMMIT")
            for ident, req, row in answers:
                sock.send_multipart([ident, *p.encode(p.Reply(req=req, ok=True, data={"job_id": f"{row:012x}"}))])


# ---------------------------------------------------------------- clients


def _image(tag: str, size: int) -> bytes:
    """A distinct image of about `size` bytes (at least a signature, a tag and 16 random bytes)."""
    head = b"\x89PNG" + tag.encode() + os.urandom(16)
    return head + b"\0" * max(0, size - len(head))


def _client(endpoint: str, seconds: float, tag: str, start: Any, out: Any, size: int = 0) -> None:
    """One synchronous client: submit one distinct image at a time for `seconds`."""
    with Client(endpoint, timeout=30) as c:
        for i in range(10):  # connect and warm up
            c.submit([(f"{tag}-w{i}.png", _image(f"{tag}-w{i}", size))], processor="noop")
        start.wait()
        lat: list[float] = []
        end = time.perf_counter() + seconds
        i = 0
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                break
            c.submit([(f"{tag}-{i}.png", _image(f"{tag}-{i}", size))], processor="noop")
            lat.append(time.perf_counter() - t0)
            i += 1
    out.put(lat)


def submissions(endpoint: str, clients: int, seconds: float, size: int = 0) -> dict[str, float]:
    """Submissions/s and per-request latency with `clients` synchronous client processes."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    tag = f"c{time.monotonic_ns()}"
    procs = [ctx.Process(target=_client, args=(endpoint, seconds, f"{tag}-{k}", start, out, size))
             for k in range(clients)]
    for proc in procs:
        proc.start()
    time.sleep(1.0 + 0.3 * clients)  # let every client connect and warm up
    start.set()
    lats: list[float] = []
    for _ in procs:
        lats += out.get(timeout=seconds + 120)
    for proc in procs:
        proc.join()
    return {"per_s": round(len(lats) / seconds, 1), "p50_ms": round(median(lats) * 1000, 3),
            "p99_ms": round(percentile(lats, 99) * 1000, 3)}


# ---------------------------------------------------------------- the round trip


def round_trip(endpoint: str, n: int) -> dict[str, float]:
    """Submit one noop image, wait for its job's 'done' event; p50 and p99 in ms."""
    out = []
    with Client(endpoint, timeout=30) as c:
        c.subscribe(None)
        for i in range(n + 10):
            c.next_events(0)
            t0 = time.perf_counter()
            job = c.submit([(f"{i}.png", b"\x89PNG rt" + os.urandom(16))], processor="noop")
            while not any(e.get("kind") == "job" and e.get("job_id") == job and e.get("state") == "done"
                          for e in c.next_events(5.0)):
                pass
            if i >= 10:
                out.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": round(median(out), 3), "p99_ms": round(percentile(out, 99), 3)}


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    ap.add_argument("--repeat", type=int, default=3, help="floor/cutq pairs per client count (median)")
    ap.add_argument("--clients", default="1,4")
    ap.add_argument("--size", type=int, default=0, help="image bytes (default: tiny, ~40)")
    ap.add_argument("-n", type=int, default=300, help="round trips")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--serve-floor", nargs=2, metavar=("ENDPOINT", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_floor:
        serve_floor(*args.serve_floor)
        return 0
    result: dict[str, Any] = {"bench": "requests", "machine": machine(), "image_bytes": args.size,
                              "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="cutq-floor-") as tmp, cluster(0, []) as endpoint:
        floor_ep = f"tcp://127.0.0.1:{free_port()}"
        env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
        floor = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-floor", floor_ep, tmp],
                                 env=env)
        try:
            for clients in (int(c) for c in args.clients.split(",")):
                pairs = []
                for _ in range(args.repeat):  # side by side: floor, cutq, floor, cutq...
                    f = submissions(floor_ep, clients, args.seconds, args.size)
                    q = submissions(endpoint, clients, args.seconds, args.size)
                    pairs.append((f, q))
                ratios = [q["per_s"] / f["per_s"] for f, q in pairs]
                best = sorted(range(len(pairs)), key=lambda k: ratios[k])[len(pairs) // 2]
                floor_m, cutq_m = pairs[best]
                result[f"clients_{clients}"] = {
                    "floor": floor_m, "cutq": cutq_m, "ratio": round(ratios[best], 3),
                    "ratios": [round(r, 3) for r in ratios],
                }
        finally:
            floor.kill()
            floor.wait()
    with cluster(1, ["--concurrency", "1", "--preload", ""]) as endpoint:
        result["noop_round_trip"] = round_trip(endpoint, args.n)
    result["load_after"] = os.getloadavg()
    report(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
