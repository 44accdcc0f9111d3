"""`cutq broker`, `cutq worker`, `cutq tui` and `cutq up`: the long-running commands.

Each imports its daemon inside the command function, never at module level.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from cli.parsing import Subparsers, add_command, bind_and_data, client_options, non_negative_int, positive_int
from shared.config import DEFAULT_MODEL, BrokerConfig, WorkerConfig, endpoint_problem, parse_duration


def duration(text: str) -> float:
    """argparse type for 30s / 15m / 1h / 7d."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_broker(args: argparse.Namespace) -> int:
    if _bad_endpoint(args.bind.replace("://*:", "://0.0.0.0:"), "--bind"):
        return 2
    from broker.server import serve

    config = BrokerConfig(
        bind=args.bind, data_dir=Path(args.data), heartbeat_interval=args.heartbeat,
        heartbeat_liveness=args.liveness, max_queued_tasks=args.max_queued,
        max_tasks_per_submit=args.max_per_submit, max_attempts=args.max_attempts,
        max_worker_deaths=args.max_worker_deaths, max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        retention_s=args.retention, webhook_allow=args.webhook_allow, public_url=args.public_url,
        webhook_retry_s=args.webhook_retry,
        metrics=args.metrics,
        synchronous=args.synchronous, insecure=args.insecure, busy_timeout_ms=args.busy_timeout_ms,
    )
    return serve(config)


def _bad_endpoint(endpoint: str, flag: str) -> bool:
    """Say so (one line) if `endpoint` is malformed, before a daemon starts on it."""
    problem = endpoint_problem(endpoint)
    if problem:
        print(f"cutq: bad {flag} endpoint {endpoint!r}: {problem}", file=sys.stderr)
    return bool(problem)


def cmd_worker(args: argparse.Namespace) -> int:
    if _bad_endpoint(args.connect, "--connect"):
        return 2
    from worker.daemon import serve

    config = WorkerConfig(
        connect=args.connect, concurrency=args.concurrency, name=args.name or "",
        heartbeat_interval=args.heartbeat, heartbeat_liveness=args.liveness,
        threads_per_slot=args.threads, preload_models=tuple(m for m in args.preload.split(",") if m),
        drain_timeout=args.drain_timeout, recycle_after_tasks=args.recycle_after,
        recycle_rss_mb=args.recycle_rss_mb, batch_size=args.batch,
        max_image_pixels=args.max_pixels, max_image_bytes=args.max_bytes,
        key=args.key or "", server_key=args.server_key or "",
    )
    return serve(config)


def cmd_tui(args: argparse.Namespace) -> int:
    if _bad_endpoint(args.connect, "--connect"):
        return 2
    from tui.app import run

    # the dashboard's clients take their CURVE keys from the environment: hand the flags on
    for var, value in (("CUTQ_KEY", args.key), ("CUTQ_SERVER_KEY", args.server_key)):
        if value:
            os.environ[var] = value
    run(args.connect)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    if _bad_endpoint(args.bind.replace("://*:", "://0.0.0.0:"), "--bind"):
        return 2
    from cli.up import up

    return up(args)


def _auto_or_count(auto: int, least: int) -> Callable[[str], int]:
    """An argparse type: "auto" -> `auto`, else an integer >= `least`."""

    def parse(value: str) -> int:
        if value.strip().lower() == "auto":
            return auto
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected auto or an integer, got {value!r}") from None
        if n < least:
            raise argparse.ArgumentTypeError(f"expected auto or an integer >= {least}, got {n}")
        return n

    parse.__name__ = "auto or integer"
    return parse


def register(sub: Subparsers) -> None:
    """Add broker, worker, tui and up to `sub`."""
    b = add_command(sub, "broker", help="run the broker",
                    description="Run the broker: the one process that owns the queue (SQLite and an image store "
                                "in --data) and hands tasks to workers. Runs until SIGINT or SIGTERM.")
    bind_and_data(b)
    b.add_argument("--heartbeat", type=float, default=1.0, metavar="SECONDS", help="heartbeat interval, seconds")
    b.add_argument("--liveness", type=int, default=3, metavar="N",
                   help="missed heartbeats before a worker is declared dead")
    b.add_argument("--max-queued", type=int, default=BrokerConfig.max_queued_tasks, metavar="N",
                   help="most tasks queued in all; a submission beyond is refused (queue_full)")
    b.add_argument("--max-per-submit", type=int, default=BrokerConfig.max_tasks_per_submit, metavar="N",
                   help="most images in one job")
    b.add_argument("--max-attempts", type=int, default=BrokerConfig.max_attempts, metavar="N",
                   help="attempts of a task (transient failures are retried with backoff) before it fails")
    b.add_argument("--max-worker-deaths", type=int, default=BrokerConfig.max_worker_deaths, metavar="N",
                   help="quarantine (fail) a task once this many workers died running it")
    b.add_argument("--max-message-mb", type=float, default=BrokerConfig.max_message_bytes / 1024 / 1024,
                   metavar="MIB",
                   help="largest message (a whole submission) the broker takes, in MiB; bigger ones are "
                        "refused with too_large (default %(default)g)")
    b.add_argument("--webhook-allow", default="", metavar="NETS",
                   help="private addresses webhooks may call, comma-separated (127.0.0.1,10.0.0.0/8); by "
                        "default private, loopback and link-local targets are refused")
    b.add_argument("--webhook-retry", type=duration, default=BrokerConfig.webhook_retry_s, metavar="DURATION",
                   help="keep retrying a failing webhook this long after its job ended (default 24h)")
    b.add_argument("--public-url", default="", metavar="URL",
                   help="the HTTP gateway's base URL (https://cutq.example.com): webhook bodies then link "
                        "each result (default: none)")
    b.add_argument("--metrics", default="", metavar="HOST:PORT",
                   help="serve Prometheus metrics on HOST:PORT (/metrics); off by default")
    b.add_argument("--retention", type=duration, default=BrokerConfig.retention_s, metavar="DURATION",
                   help="delete a finished job with its images and results this long after it ended: "
                        "30s, 15m, 1h, 7d; 0 keeps everything (default 24h)")
    b.add_argument("--synchronous", default="FULL", choices=["NORMAL", "FULL", "EXTRA"],
                   help="SQLite's synchronous setting: FULL survives a power cut, NORMAL only a crash")
    b.add_argument("--busy-timeout-ms", type=int, default=BrokerConfig.busy_timeout_ms, metavar="MS",
                   help="how long a write waits for a lock held by another process")
    b.add_argument("--insecure", action="store_true",
                   help="allow binding a non-loopback address without CURVE keys (plaintext, anyone may connect)")
    b.set_defaults(func=cmd_broker, daemon=True)

    w = add_command(sub, "worker", help="run a worker",
                    description="Run a worker: connect to the broker, announce slots and models, and run the "
                                "tasks it is given (one process per slot). SIGTERM drains it.")
    client_options(w, json=False, timeout=False)
    w.add_argument("--concurrency", "-c", type=_auto_or_count(0, 1), default=1, metavar="N|auto",
                   help="slots: tasks run at once; auto: from the cores and a short trial on the first model")
    w.add_argument("--name", help="worker name (default HOST-PID)")
    w.add_argument("--heartbeat", type=float, default=1.0, metavar="SECONDS", help="heartbeat interval, seconds")
    w.add_argument("--liveness", type=int, default=3, metavar="N",
                   help="heartbeats missed from the broker before reconnecting")
    w.add_argument("--threads", type=int, default=0, metavar="N",
                   help="onnxruntime threads per slot (default 0: cores/slots)")
    w.add_argument("--preload", default=DEFAULT_MODEL, metavar="MODELS",
                   help="comma-separated models to load at start ('' for none)")
    w.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="on SIGTERM, how long running tasks may finish before they go back to the queue")
    w.add_argument("--recycle-after", type=int, default=0, metavar="N",
                   help="restart a slot process after N tasks (default 0: never)")
    w.add_argument("--recycle-rss-mb", type=_auto_or_count(-1, 0), default=WorkerConfig.recycle_rss_mb,
                   metavar="MIB|auto",
                   help="restart a slot process above this RSS in MiB; 0: never; auto (default): "
                        "max(1024, twice its RSS after its first task)")
    w.add_argument("--batch", type=positive_int, default=WorkerConfig.batch_size, metavar="N",
                   help="micro-batching: up to N queued tasks of one model per inference run in a slot "
                        "(off: 1; meant for GPUs, gains nothing on CPU)")
    w.add_argument("--max-pixels", type=int, default=WorkerConfig.max_image_pixels, metavar="N",
                   help="an image with more pixels fails its task (input error)")
    w.add_argument("--max-bytes", type=int, default=WorkerConfig.max_image_bytes, metavar="N",
                   help="an image file bigger than this fails its task (input error)")
    w.set_defaults(func=cmd_worker, daemon=True)

    t = add_command(sub, "tui", help="the live dashboard",
                    description="The live dashboard (a terminal UI): jobs, workers, throughput; q quits.")
    client_options(t, json=False, timeout=False)
    t.set_defaults(func=cmd_tui, daemon=True)

    u = add_command(sub, "up", help="broker + local workers + dashboard, with the sample photos",
                    description="Run a broker, local workers and the dashboard in one command, submitting the "
                                "sample photos scikit-image ships; every child stops when it returns. Logs go "
                                "to DATA/logs.")
    bind_and_data(u)
    u.add_argument("--workers", type=non_negative_int, default=2, metavar="N", help="local workers to start")
    u.add_argument("--no-samples", action="store_true", help="do not submit the sample photos")
    u.add_argument("--no-tui", action="store_true", help="watch the sample job instead of the dashboard")
    u.set_defaults(func=cmd_up, daemon=True)
