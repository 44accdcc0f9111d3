"""What the HTTP gateway adds: one-image submit -> result through `cutq http` vs the zmq client.

One broker, one worker (noop: answered inline, so the numbers are the plumbing alone) and
one `cutq http` process.  Latency, side by side in one run, interleaved image by image:

  zmq        Client.submit, wait for the pushed "job done" event, Client.fetch_result
  http-poll  POST /v1/jobs, GET /v1/jobs/{id} every 2 ms until done, GET the result
  http-sse   POST /v1/jobs, GET /v1/jobs/{id}/events until `end`, GET the result

Overhead is http's percentile minus zmq's.  Then uploads/s: 8 threads, each with its own
connection, submitting one-image jobs for `--seconds` (and the same with 8 zmq Clients).
The bench's clients share the machine (and one GIL) with everything they measure.

    python bench/http_api.py --json

(Not bench/http.py: run as a script, this folder comes first on sys.path, and a file named
http.py there would stand in for the standard library's http package in every bench script.)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
from harness import REPO, Client, cluster, free_port, machine, median, percentile

TINY = b"\x89PNG\r\n\x1a\n bench"  # noop hands it back


@contextmanager
def gateway(endpoint: str) -> Iterator[str]:
    """A `cutq http` in front of `endpoint`; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="cutq-bench-http-") as cfg:
        env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CONFIG_HOME": cfg}
        env.pop("CUTQ_TOKENS", None)
        proc = subprocess.Popen([sys.executable, "-m", "cli", "http", "--connect", endpoint,
                                 "--listen", f"127.0.0.1:{port}"], env=env, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("cutq http did not start")
                time.sleep(0.05)
            yield url
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def via_zmq(c: Client, i: int, payload: bytes) -> None:
    c.next_events(0)  # drop what came before this submit
    job = c.submit([(f"{i}.png", payload)], processor="noop")
    while not any(e.get("kind") == "job" and e.get("job_id") == job and e.get("state") == "done"
                  for e in c.next_events(5.0)):
        pass
    task = c.status(job)["tasks"][0]["task_id"]
    c.fetch_result(task)


def _post(h: httpx.Client, i: int, payload: bytes) -> str:
    r = h.post("/v1/jobs", files={"files": (f"{i}.png", payload)}, data={"processor": "noop"})
    r.raise_for_status()
    return str(r.json()["job_id"])


def via_http_poll(h: httpx.Client, i: int, payload: bytes) -> None:
    job = _post(h, i, payload)
    while True:
        status = h.get(f"/v1/jobs/{job}").json()
        if status["state"] == "done":
            break
        time.sleep(0.002)
    h.get(status["tasks"][0]["result_url"]).raise_for_status()


def via_http_sse(h: httpx.Client, i: int, payload: bytes) -> None:
    job = _post(h, i, payload)
    with h.stream("GET", f"/v1/jobs/{job}/events") as r:
        for line in r.iter_lines():
            if line == "event: end":
                break
    status = h.get(f"/v1/jobs/{job}").json()
    h.get(status["tasks"][0]["result_url"]).raise_for_status()


def latency(endpoint: str, url: str, n: int, payload: bytes) -> dict[str, list[float]]:
    """Milliseconds per submit -> result, the three ways taking turns image by image."""
    out: dict[str, list[float]] = {"zmq": [], "http-poll": [], "http-sse": []}
    with Client(endpoint, timeout=30) as c, httpx.Client(base_url=url, timeout=30) as h:
        c.subscribe(None)
        ways: list[tuple[str, Callable[[int], None]]] = [
            ("zmq", lambda i: via_zmq(c, i, payload)),
            ("http-poll", lambda i: via_http_poll(h, i, payload)),
            ("http-sse", lambda i: via_http_sse(h, i, payload)),
        ]
        for i in range(n + 5):
            for label, way in ways:
                start = time.perf_counter()
                way(i)
                if i >= 5:  # warm-up
                    out[label].append((time.perf_counter() - start) * 1000)
    return out


def throughput(submit_one: Callable[[object, int], None], make: Callable[[], object], close: Callable[[object], None],
               clients: int, seconds: float) -> dict[str, float]:
    """Jobs submitted per second by `clients` threads, each with its own connection."""
    counts = [0] * clients
    errors = [0] * clients
    stop = time.monotonic() + seconds
    start_line = threading.Barrier(clients + 1)

    def run(k: int) -> None:
        conn = make()
        try:
            start_line.wait()
            i = 0
            while time.monotonic() < stop:
                try:
                    submit_one(conn, k * 1_000_000 + i)
                    counts[k] += 1
                except Exception:
                    errors[k] += 1
                i += 1
        finally:
            close(conn)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start_line.wait()
    began = time.monotonic()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    return {"uploads_per_s": round(sum(counts) / elapsed, 1), "uploads": sum(counts), "errors": sum(errors),
            "seconds": round(elapsed, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="images per way for the latency part")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each throughput run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result: dict = {"bench": "http", "machine": machine(), "n": args.n, "clients": args.clients,
                    "load_before": [round(x, 2) for x in os.getloadavg()]}
    with cluster(1, ["--concurrency", "1", "--preload", ""]) as endpoint, gateway(endpoint) as url:
        ms = latency(endpoint, url, args.n, TINY)
        result["latency_ms"] = {k: {"p50": round(median(v), 2), "p99": round(percentile(v, 99), 2)}
                                for k, v in ms.items()}
        z = result["latency_ms"]["zmq"]
        result["overhead_ms"] = {k: {"p50": round(v["p50"] - z["p50"], 2), "p99": round(v["p99"] - z["p99"], 2)}
                                 for k, v in result["latency_ms"].items() if k != "zmq"}
        result["uploads"] = {
            f"http_{args.clients}_clients": throughput(
                lambda h, i: _post(h, i, TINY), lambda: httpx.Client(base_url=url, timeout=30),
                lambda h: h.close(), args.clients, args.seconds),
            f"zmq_{args.clients}_clients": throughput(
                lambda c, i: c.submit([(f"{i}.png", TINY)], processor="noop"),
                lambda: Client(endpoint, timeout=30), lambda c: c.close(), args.clients, args.seconds),
        }
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result["latency_ms"].items():
            extra = f"  (+{result['overhead_ms'][k]['p50']} / +{result['overhead_ms'][k]['p99']} ms)" \
                if k in result["overhead_ms"] else ""
            print(f"{k:10} p50 {v['p50']} ms, p99 {v['p99']} ms{extra}")
        for k, v in result["uploads"].items():
            print(f"{k}: {v['uploads_per_s']} uploads/s ({v['errors']} errors)")
        print(f"load average before {result['load_before']}, after {result['load_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
