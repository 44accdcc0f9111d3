"""The `cutq` command: daemons (broker, worker, up, tui) and client commands.

Client commands go through shared.client; every read command has --json; errors
are one line on stderr (set CUTQ_DEBUG=1 for a traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from shared.client import BrokerUnavailable, Client, CutqError, collect_images
from shared.config import DEFAULT_MODEL, BrokerConfig, WorkerConfig, default_data_dir, default_endpoint
from shared.options import PROCESSORS
from shared.security import Credentials, CredentialsError
from shared.states import TASK_STATES, TERMINAL


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _ago(t: float | None) -> str:
    if not t:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _counts(d: dict) -> str:
    return " ".join(f"{s}={d.get(s, 0)}" for s in TASK_STATES)


# ---------------------------------------------------------------- daemons

def cmd_broker(args: argparse.Namespace) -> int:
    from broker.server import serve

    config = BrokerConfig(
        bind=args.bind, data_dir=Path(args.data), heartbeat_interval=args.heartbeat,
        heartbeat_liveness=args.liveness, max_queued_tasks=args.max_queued,
        max_tasks_per_submit=args.max_per_submit, max_attempts=args.max_attempts,
        max_worker_deaths=args.max_worker_deaths,
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
        recycle_rss_mb=args.recycle_rss_mb, max_image_pixels=args.max_pixels, max_image_bytes=args.max_bytes,
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
    from shared.launcher import up

    return up(args)


# ---------------------------------------------------------------- client commands

def _options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if args.processor == "rembg":
        opts["model"] = args.model
        if args.alpha_matting:
            opts["alpha_matting"] = True
            opts["alpha_matting_foreground_threshold"] = args.fg_threshold
            opts["alpha_matting_background_threshold"] = args.bg_threshold
            opts["alpha_matting_erode_size"] = args.erode_size
        if args.only_mask:
            opts["only_mask"] = True
        if args.post_process_mask:
            opts["post_process_mask"] = True
        if args.bgcolor:
            opts["bgcolor"] = args.bgcolor
    if args.processor == "sleep":
        opts["seconds"] = args.seconds
    opts["format"] = args.format
    return opts


def cmd_submit(args: argparse.Namespace, client: Client) -> int:
    files = collect_images(args.files)
    job_id = client.submit(
        [(f.name, f.read_bytes()) for f in files], processor=args.processor, options=_options(args),
        priority=args.priority, tenant=args.tenant,
    )
    if not args.wait:
        if args.json:
            _print_json({"job_id": job_id, "tasks": len(files)})
        else:
            print(f"submitted job {job_id} with {len(files)} image(s)")
        return 0
    status = client.wait(job_id, timeout=args.timeout)
    written = client.fetch(job_id, args.out) if args.out else []
    failures = [t for t in status["tasks"] if t["state"] != "done"]
    if args.json:
        _print_json({"job_id": job_id, **{k: status[k] for k in ("state", *TASK_STATES)},
                     "written": [str(w) for w in written],
                     "failures": [{"name": t["name"], "state": t["state"], "error": t["error"]} for t in failures]})
    else:
        print(f"job {job_id} {status['state']}: {_counts(status)}")
        for w in written:
            print(f"  wrote {w}")
        for t in failures:
            print(f"  {t['name']}: {t['state']}{': ' + t['error'] if t['error'] else ''}", file=sys.stderr)
    return 0 if not failures else 1


def cmd_status(args: argparse.Namespace, client: Client) -> int:
    status = client.status(args.job)
    if args.json:
        _print_json(status)
        return 0
    print(f"job {status['job_id']}  {status['state']}  {status['done']}/{status['total']} done  "
          f"processor={status['processor']} model={status['model']} tenant={status['tenant']}")
    print(f"  {_counts(status)}   submitted {_ago(status['created'])}  finished {_ago(status['finished'])}")
    rows = [[t["task_id"], t["name"], t["state"], t["attempts"], t["worker"] or "-", t["error"] or ""]
            for t in status["tasks"]]
    print(_table(rows, ["TASK", "FILE", "STATE", "ATTEMPTS", "WORKER", "ERROR"]))
    return 0


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def cmd_watch(args: argparse.Namespace, client: Client) -> int:
    status = client.status(args.job, tasks=False)
    client.subscribe(args.job)
    tty = sys.stdout.isatty()
    last = None
    while True:
        ended = status["total"] - status["queued"] - status["running"]
        line = (f"{status['job_id']} {_bar(ended, status['total'])} {ended}/{status['total']} "
                f"{status['state']}  {_counts(status)}")
        if args.json:
            if line != last:
                print(json.dumps({k: status[k] for k in ("job_id", "state", "total", *TASK_STATES)}), flush=True)
        elif tty:
            print("\r" + line, end="", flush=True)
        elif line != last:
            print(line, flush=True)
        last = line
        if status["state"] in TERMINAL:
            break
        for e in client.next_events(2.0):
            if e.get("kind") == "job" and e.get("job_id") == args.job:
                status = e
        else:
            if not tty:
                status = client.status(args.job, tasks=False)
    if tty and not args.json:
        print()
    return 0 if status["state"] == "done" else 1


def cmd_list(args: argparse.Namespace, client: Client) -> int:
    page = client.list_jobs(args.state, search=args.search, limit=args.limit, offset=args.offset)
    if args.json:
        _print_json(page)
        return 0
    rows = [[j["job_id"], _ago(j["created"]), j["processor"], j["model"] or "-", j["state"],
             f"{j['done']}/{j['total']}", j["failed"]] for j in page["jobs"]]
    print(_table(rows, ["JOB", "SUBMITTED", "PROCESSOR", "MODEL", "STATE", "DONE", "FAILED"]))
    print(f"({len(page['jobs'])} of {page['total']} jobs)")
    return 0


def cmd_stats(args: argparse.Namespace, client: Client) -> int:
    s = client.stats()
    if args.json:
        _print_json(s)
        return 0
    print(f"tasks: {_counts(s)}  ({s['jobs']} jobs)")
    eta = f"{s['eta_s']:.0f}s" if s.get("eta_s") is not None else "-"
    print(f"queue depth {s['queue_depth']}, {s['tasks_per_s']:.1f} tasks/s, {s['images_per_s']:.1f} images/s, "
          f"drains in {eta}")
    print(f"workers {s['workers_busy']}/{s['workers_total']} busy, slots {s['slots_used']}/{s['slots_total']}"
          f"{', DISPATCH PAUSED' if s['paused'] else ''}")
    return 0


def cmd_workers(args: argparse.Namespace, client: Client) -> int:
    workers = client.workers()
    if args.json:
        _print_json({"workers": workers})
        return 0
    rows = [[w["name"], w["host"], w["pid"], w["state"], f"{w['busy']}/{w['slots']}", ",".join(w["models"]),
             f"{w['last_seen_age']:.1f}s", w["done"], w["failed"]] for w in workers]
    print(_table(rows, ["NAME", "HOST", "PID", "STATE", "SLOTS", "MODELS", "SEEN", "DONE", "FAILED"]))
    return 0


def cmd_cancel(args: argparse.Namespace, client: Client) -> int:
    r = client.cancel(args.job)
    _print_json(r) if args.json else print(f"cancelled {r['cancelled']} task(s) of job {args.job}")
    return 0


def cmd_retry(args: argparse.Namespace, client: Client) -> int:
    r = client.retry(args.job)
    _print_json(r) if args.json else print(f"re-queued {r['requeued']} task(s) of job {args.job}")
    return 0


def cmd_fetch(args: argparse.Namespace, client: Client) -> int:
    written = client.fetch(args.job, args.out)
    if args.json:
        _print_json({"written": [str(w) for w in written]})
    else:
        for w in written:
            print(f"wrote {w}")
        print(f"{len(written)} result(s) in {args.out}")
    return 0


def cmd_pause(args: argparse.Namespace, client: Client) -> int:
    r = client.pause(args.command == "pause", tenant=args.tenant)
    _print_json(r) if args.json else print(f"dispatch {'paused' if r['paused'] else 'resumed'}"
                                           f"{' for tenant ' + args.tenant if args.tenant else ''}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from broker.keys import KeyRing, broker_cert_paths, init_keys

    data = Path(args.data)
    if args.keys_command == "init":
        public = init_keys(data)
        print(f"created the broker's keys; give peers its public key: {public}")
        return 0
    if not broker_cert_paths(data)[1].exists():
        raise CutqError(f"no broker keys in {data}: run `cutq keys init --data {data}` first", code="bad_request")
    ring = KeyRing(data)
    if args.keys_command == "add":
        secret = ring.add(args.name, args.role, args.tenant)
        if args.json:
            _print_json({"name": args.name, "secret_certificate": str(secret),
                         "server_certificate": str(broker_cert_paths(data)[0])})
        else:
            print(f"created {args.role} key {args.name}: hand over {secret} (secret, mode 0600) "
                  f"and {broker_cert_paths(data)[0]} (the broker's public key)")
    elif args.keys_command == "revoke":
        ring.revoke(args.name)
        print(f"revoked {args.name}")
    else:
        entries = ring.entries()
        if args.json:
            _print_json({"keys": entries})
        else:
            rows = [[e["name"], e["role"], e.get("tenant") or "-", "revoked" if e.get("revoked") else "active",
                     e["public_key"][:12] + "..."] for e in entries]
            print(_table(rows, ["NAME", "ROLE", "TENANT", "STATE", "PUBLIC KEY"]))
    return 0


def cmd_tenants(args: argparse.Namespace, client: Client) -> int:
    if args.tenants_command == "set":
        policy = {k: v for k, v in (("weight", args.weight), ("max_running", args.max_running),
                                    ("rate", args.rate), ("max_queued", args.max_queued)) if v is not None}
        r = client.set_tenant(args.tenant, **policy)
        _print_json(r) if args.json else print(
            f"tenant {args.tenant}: weight {r['weight']:g}, max running {r['max_running'] or '-'}, "
            f"rate {r['rate'] or '-'}/s, max queued {r['max_queued'] or '-'}")
        return 0
    tenants = client.tenants()
    if args.json:
        _print_json({"tenants": tenants})
        return 0
    rows = [[t["tenant"], f"{t['weight']:g}", t["max_running"] or "-", t["rate"] or "-", t["max_queued"] or "-",
             t["queued"], t["running"], t["done"], t["failed"], "yes" if t["paused"] else ""] for t in tenants]
    print(_table(rows, ["TENANT", "WEIGHT", "MAX RUN", "RATE", "MAX QUEUED", "QUEUED", "RUNNING", "DONE",
                        "FAILED", "PAUSED"]))
    return 0


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--connect", default=default_endpoint(), help="broker endpoint ($CUTQ_CONNECT)")
    common.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the broker")
    common.add_argument("-v", "--verbose", action="store_true", help="log more")
    common.add_argument("--key", help="this peer's secret CURVE certificate ($CUTQ_KEY)")
    common.add_argument("--server-key", help="the broker's public CURVE certificate ($CUTQ_SERVER_KEY)")
    parser = argparse.ArgumentParser(prog="cutq", description="A distributed background-removal queue.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_parser = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return _add_parser(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]

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
    b.add_argument("--synchronous", default="FULL", choices=["NORMAL", "FULL", "EXTRA"])
    b.add_argument("--busy-timeout-ms", type=int, default=BrokerConfig.busy_timeout_ms,
                   help="how long a write waits for a lock held by another process")
    b.add_argument("--insecure", action="store_true",
                   help="allow binding a non-loopback address without CURVE keys (plaintext, anyone may connect)")
    b.set_defaults(func=cmd_broker, daemon=True)

    w = sub.add_parser("worker", help="run a worker")
    w.add_argument("--concurrency", "-c", type=int, default=1, help="slots: tasks run at once")
    w.add_argument("--name", help="worker name (default host-pid)")
    w.add_argument("--heartbeat", type=float, default=1.0)
    w.add_argument("--liveness", type=int, default=3)
    w.add_argument("--threads", type=int, default=0, help="onnxruntime threads per slot (0: cores/slots)")
    w.add_argument("--preload", default=DEFAULT_MODEL, help="comma-separated models to load at start")
    w.add_argument("--drain-timeout", type=float, default=30.0)
    w.add_argument("--recycle-after", type=int, default=0, help="restart a slot process after N tasks")
    w.add_argument("--recycle-rss-mb", type=int, default=0, help="restart a slot process above this RSS")
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

    s = sub.add_parser("submit", help="submit images (files or directories) as one job")
    s.add_argument("files", nargs="+")
    s.add_argument("--model", "-m", default=DEFAULT_MODEL)
    s.add_argument("--processor", default="rembg", choices=PROCESSORS)
    s.add_argument("--alpha-matting", action="store_true")
    s.add_argument("--fg-threshold", type=int, default=240)
    s.add_argument("--bg-threshold", type=int, default=10)
    s.add_argument("--erode-size", type=int, default=10)
    s.add_argument("--only-mask", action="store_true")
    s.add_argument("--post-process-mask", action="store_true")
    s.add_argument("--bgcolor", help="replace the background: #rrggbb or #rrggbbaa")
    s.add_argument("--format", default="png", choices=["png", "webp"])
    s.add_argument("--seconds", type=float, default=1.0, help="(sleep processor) seconds per task")
    s.add_argument("--priority", type=int, default=0)
    s.add_argument("--tenant", default="default")
    s.add_argument("--wait", action="store_true", help="wait for the job to end")
    s.add_argument("--out", help="with --wait: write results here as <stem>.<ext>")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_submit)

    for name, func, helptext in (("status", cmd_status, "a job's state and tasks"),
                                 ("watch", cmd_watch, "live progress of a job until it ends"),
                                 ("cancel", cmd_cancel, "cancel a job's queued and running tasks"),
                                 ("retry", cmd_retry, "re-queue a job's failed and cancelled tasks")):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("job")
        c.add_argument("--json", action="store_true")
        c.set_defaults(func=func)

    f = sub.add_parser("fetch", help="write a job's results to a directory")
    f.add_argument("job")
    f.add_argument("--out", required=True)
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_fetch)

    li = sub.add_parser("list", help="jobs, newest first")
    li.add_argument("--state", choices=TASK_STATES)
    li.add_argument("--search", help="job id prefix or file name")
    li.add_argument("--limit", type=int, default=50)
    li.add_argument("--offset", type=int, default=0)
    li.add_argument("--json", action="store_true")
    li.set_defaults(func=cmd_list)

    for name, func, helptext in (("stats", cmd_stats, "queue totals and throughput"),
                                 ("workers", cmd_workers, "connected workers")):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("--json", action="store_true")
        c.set_defaults(func=func)

    k = sub.add_parser("keys", help="CURVE keys and roles (run on the broker's machine)")
    k.add_argument("--data", default=str(default_data_dir()), help="the broker's data directory")
    k.add_argument("--json", action="store_true")
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    ksub.add_parser("init", help="create the broker's key pair (turns CURVE on)")
    ka = ksub.add_parser("add", help="create and register a key for a peer")
    ka.add_argument("name")
    ka.add_argument("--role", required=True, choices=["client", "admin", "worker"])
    ka.add_argument("--tenant", help="the tenant a client key acts for")
    ksub.add_parser("list", help="registered keys")
    kr = ksub.add_parser("revoke", help="revoke a key (takes effect on a running broker)")
    kr.add_argument("name")
    k.set_defaults(func=cmd_keys, daemon=True)

    tn = sub.add_parser("tenants", help="tenants: shares, limits and counts")
    tn.add_argument("--json", action="store_true")
    tsub = tn.add_subparsers(dest="tenants_command", metavar="ACTION")
    # `set` also takes the global flags after its own (`tenants set A --weight 3 --connect X`);
    # SUPPRESS keeps one given before `set` from being reset to its default
    late = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for action in common._actions:
        late.add_argument(*action.option_strings, dest=action.dest, action=type(action), help=action.help,
                          **({"type": action.type} if action.type else {}))
    late.add_argument("--json", action="store_true")
    ts = tsub.add_parser("set", parents=[late], help="set a tenant's weight and limits (admin)")
    ts.add_argument("tenant")
    ts.add_argument("--weight", type=float, help="share of the workers relative to other tenants")
    ts.add_argument("--max-running", type=int, help="most tasks running at once (0: no cap)")
    ts.add_argument("--rate", type=float, help="most tasks started per second (0: no cap)")
    ts.add_argument("--max-queued", type=int, help="most tasks queued; submits beyond are refused (0: no cap)")
    tn.set_defaults(func=cmd_tenants)

    for name in ("pause", "resume"):
        c = sub.add_parser(name, help=f"{name} dispatch (persisted by the broker)")
        c.add_argument("--tenant")
        c.add_argument("--json", action="store_true")
        c.set_defaults(func=cmd_pause)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if getattr(args, "daemon", False) else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    func: Callable = args.func
    try:
        if getattr(args, "daemon", False):
            return func(args)
        credentials = Credentials.from_env(os.environ, args.key, args.server_key)
        with Client(args.connect, timeout=args.timeout, credentials=credentials) as client:
            return func(args, client)
    except BrokerUnavailable as e:
        print(f"cutq: {e} (is `cutq broker` running? set --connect or CUTQ_CONNECT)", file=sys.stderr)
        return 3
    except (CutqError, CredentialsError) as e:
        print(f"cutq: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # the promise: one line, never a traceback (CUTQ_DEBUG=1 for one)
        if os.environ.get("CUTQ_DEBUG"):
            raise
        from broker.keys import KeysError
        from broker.server import BrokerSetupError

        if isinstance(e, (KeysError, BrokerSetupError)):
            print(f"cutq: {e}", file=sys.stderr)
            return 2
        print(f"cutq: {e.__class__.__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
