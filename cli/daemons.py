"""`cutq broker`, `cutq worker`, `cutq tui` and `cutq up`: the long-running commands.

Each imports its daemon inside the command function, never at module level.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from shared.config import (
    DEFAULT_MODEL,
    BrokerConfig,
    WorkerConfig,
    default_data_dir,
    default_endpoint,
    parse_duration,
)


def duration(text: str) -> float:
    """argparse type for 30s / 15m / 1h / 7d."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_broker(args: argparse.Namespace) -> int:
    from broker.server import serve

    config = BrokerConfig(
        bind=args.bind, data_dir=Path(args.data), heartbeat_interval=args.heartbeat,
        heartbeat_liveness=args.liveness, max_queued_tasks=args.max_queued,
        max_tasks_per_submit=args.max_per_submit, max_attempts=args.max_attempts,
        max_worker_deaths=args.max_worker_deaths, max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        retention_s=args.retention, webhook_allow=args.webhook_allow, public_url=args.public_url,
        metrics=args.metrics,
        synchronous=args.synchronous, insecure=args.insecure, busy_timeout_ms=args.busy_timeout_ms,
    )
    return serve(config)


def cmd_worker(args: argparse.Namespace) -> int:
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
    from tui.app import run

    # the dashboard's clients take their CURVE keys from the environment: hand the flags on
    for var, value in (("CUTQ_KEY", args.key), ("CUTQ_SERVER_KEY", args.server_key)):
        if value:
            os.environ[var] = value
    run(args.connect)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
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


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add broker, worker, tui and up to `sub` (whose add_parser already adds `common`)."""
    b = sub.add_parser("broker", help="run the broker")
    b.add_argument("--bind", default=default_endpoint())
    b.add_argument("--data", default=str(default_data_dir()), help="data directory ($CUTQ_DATA)")
    b.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat interval, seconds")
    b.add_argument("--liveness", type=int, default=3, help="missed heartbeats before a worker is dead")
    b.add_argument("--max-queued", type=int, default=BrokerConfig.max_queued_tasks)
    b.add_argument("--max-per-submit", type=int, default=BrokerConfig.max_tasks_per_submit)
    b.add_argument("--max-attempts", type=int, default=BrokerConfig.max_attempts)
    b.add_argument("--max-worker-deaths", type=int, default=BrokerConfig.max_worker_deaths,
                   help="quarantine (fail) a task once this many workers died running it")
    b.add_argument("--max-message-mb", type=float, default=BrokerConfig.max_message_bytes / 1024 / 1024,
                   help="largest message (a whole submission) the broker takes, in MiB; bigger ones are "
                        "refused with too_large (default %(default)g)")
    b.add_argument("--webhook-allow", default="", metavar="NETS",
                   help="private addresses webhooks may call, comma-separated (127.0.0.1,10.0.0.0/8); by "
                        "default private, loopback and link-local targets are refused")
    b.add_argument("--public-url", default="", metavar="URL",
                   help="the HTTP gateway's base URL (https://cutq.example.com): webhook bodies then link "
                        "each result")
    b.add_argument("--metrics", default="", metavar="HOST:PORT",
                   help="serve Prometheus metrics on HOST:PORT (/metrics); off by default")
    b.add_argument("--retention", type=duration, default=BrokerConfig.retention_s, metavar="DURATION",
                   help="delete a finished job with its images and results this long after it ended: "
                        "30s, 15m, 1h, 7d; 0 keeps everything (default 24h)")
    b.add_argument("--synchronous", default="FULL", choices=["NORMAL", "FULL", "EXTRA"])
    b.add_argument("--busy-timeout-ms", type=int, default=BrokerConfig.busy_timeout_ms,
                   help="how long a write waits for a lock held by another process")
    b.add_argument("--insecure", action="store_true",
                   help="allow binding a non-loopback address without CURVE keys (plaintext, anyone may connect)")
    b.set_defaults(func=cmd_broker, daemon=True)

    w = sub.add_parser("worker", help="run a worker")
    w.add_argument("--concurrency", "-c", type=_auto_or_count(0, 1), default=1,
                   help="slots: tasks run at once; auto: from the cores and a short trial on the first model")
    w.add_argument("--name", help="worker name (default host-pid)")
    w.add_argument("--heartbeat", type=float, default=1.0)
    w.add_argument("--liveness", type=int, default=3)
    w.add_argument("--threads", type=int, default=0, help="onnxruntime threads per slot (0: cores/slots)")
    w.add_argument("--preload", default=DEFAULT_MODEL, help="comma-separated models to load at start")
    w.add_argument("--drain-timeout", type=float, default=30.0)
    w.add_argument("--recycle-after", type=int, default=0, help="restart a slot process after N tasks")
    w.add_argument("--recycle-rss-mb", type=_auto_or_count(-1, 0), default=WorkerConfig.recycle_rss_mb,
                   help="restart a slot process above this RSS in MiB; 0: never; auto (default): "
                        "max(1024, twice its RSS after its first task)")
    w.add_argument("--batch", type=_positive, default=WorkerConfig.batch_size, metavar="N",
                   help="micro-batching: up to N queued tasks of one model per inference run in a slot "
                        "(off: 1; meant for GPUs, gains nothing on CPU)")
    w.add_argument("--max-pixels", type=int, default=WorkerConfig.max_image_pixels)
    w.add_argument("--max-bytes", type=int, default=WorkerConfig.max_image_bytes)
    w.set_defaults(func=cmd_worker, daemon=True)

    t = sub.add_parser("tui", help="the live dashboard")
    t.set_defaults(func=cmd_tui, daemon=True)

    u = sub.add_parser("up", help="broker + local workers + dashboard, with the sample photos")
    u.add_argument("--workers", type=int, default=2)
    u.add_argument("--data", default=str(default_data_dir()))
    u.add_argument("--no-samples", action="store_true")
    u.add_argument("--no-tui", action="store_true", help="watch the sample job instead of the dashboard")
    u.set_defaults(func=cmd_up, daemon=True)
