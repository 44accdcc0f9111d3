"""Queue throughput: noop tasks submitted, durably queued, dispatched, completed and
recorded, end to end, through a real broker and real worker processes.

    python bench/dispatch.py --tasks 20000 --workers 2 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from harness import Client, cluster, machine, median


def run_once(endpoint: str, tasks: int, per_job: int, submitters: int, tenants: int) -> float:
    payload = b"\x89PNG" + b"\0" * 60
    jobs_total = (tasks + per_job - 1) // per_job
    counter = iter(range(jobs_total))
    lock = threading.Lock()
    errors: list[Exception] = []

    def submit_loop() -> None:
        with Client(endpoint, timeout=60) as c:
            while True:
                with lock:
                    j = next(counter, None)
                if j is None:
                    return
                n = min(per_job, tasks - j * per_job)
                try:
                    c.submit([(f"{j}-{i}.png", payload) for i in range(n)], processor="noop",
                             tenant=f"t{j % tenants}")
                except Exception as e:  # reported below; a bench must not hang on one error
                    errors.append(e)
                    return

    with Client(endpoint, timeout=30) as c:
        base = c.stats()["done"]
        start = time.perf_counter()
        threads = [threading.Thread(target=submit_loop) for _ in range(submitters)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        while c.stats()["done"] - base < tasks:
            time.sleep(0.01)
        return tasks / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--per-job", type=int, default=500, help="images per submission")
    ap.add_argument("--submitters", type=int, default=2, help="concurrent submitting clients")
    ap.add_argument("--tenants", type=int, default=1)
    ap.add_argument("--slots", type=int, default=256, help="slots per worker (noop runs inline)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with cluster(args.workers, ["--concurrency", str(args.slots), "--preload", ""]) as endpoint:
        runs = [run_once(endpoint, args.tasks, args.per_job, args.submitters, args.tenants)
                for _ in range(args.repeat)]
    result = {
        "bench": "dispatch", "tasks": args.tasks, "workers": args.workers, "tenants": args.tenants,
        "tasks_per_s": round(median(runs)), "runs": [round(r) for r in runs], "machine": machine(),
    }
    line = f"{result['tasks_per_s']} tasks/s (median of {args.repeat}) on {result['machine']}"
    print(json.dumps(result) if args.json else line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
