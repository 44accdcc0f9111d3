"""Overhead of submit -> result beyond the work itself, on an idle system.

One image at a time: submit, then wait for the pushed "job done" event.  The
`noop` processor answers inline in the worker; `sleep` with 0 s takes the same
path as rembg (a slot process and its pipe) but does no inference, so its time
is exactly what cutq adds around an inference.

    python bench/latency.py --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from harness import Client, cluster, machine, median, percentile


def measure(endpoint: str, processor: str, options: dict, n: int) -> list[float]:
    out = []
    with Client(endpoint, timeout=30) as c:
        c.subscribe(None)
        for i in range(n + 5):
            c.next_events(0)  # drop stats ticks from before this submit
            start = time.perf_counter()
            job = c.submit([(f"{i}.png", b"\x89PNG tiny")], processor=processor, options=options)
            while True:
                events = c.next_events(5.0)
                if any(e.get("kind") == "job" and e.get("job_id") == job and e.get("state") == "done" for e in events):
                    break
            if i >= 5:  # warm-up
                out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result: dict = {"bench": "latency", "machine": machine(), "n": args.n}
    with cluster(1, ["--concurrency", "1", "--preload", ""]) as endpoint:
        for label, processor, options in (("noop", "noop", {}), ("slot", "sleep", {"seconds": 0})):
            ms = measure(endpoint, processor, options, args.n)
            result[label] = {"p50_ms": round(median(ms), 2), "p99_ms": round(percentile(ms, 99), 2)}
    if args.json:
        print(json.dumps(result))
    else:
        for k in ("noop", "slot"):
            print(f"{k}: p50 {result[k]['p50_ms']} ms, p99 {result[k]['p99_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
