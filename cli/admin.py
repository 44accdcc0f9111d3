"""`cutq stats`, `workers`, `tenants`, `pause` and `resume`: the queue as a whole."""

from __future__ import annotations

import argparse

from cli.output import counts, print_json, size, table
from cli.parsing import HelpFormatter, Subparsers, add_command, client_options, late_copy
from shared.client import Client


def cmd_stats(args: argparse.Namespace, client: Client) -> int:
    s = client.stats()
    if args.json:
        print_json(s)
        return 0
    print(f"tasks: {counts(s)}  ({s['jobs']} jobs)")
    eta = f"{s['eta_s']:.0f}s" if s.get("eta_s") is not None else "-"
    print(f"queue depth {s['queue_depth']}, {s['tasks_per_s']:.1f} tasks/s, {s['images_per_s']:.1f} images/s, "
          f"drains in {eta}")
    print(f"workers {s['workers_busy']}/{s['workers_total']} busy, slots {s['slots_used']}/{s['slots_total']}"
          f"{', DISPATCH PAUSED' if s['paused'] else ''}")
    if s.get("storage"):  # admin keys (and no CURVE) only
        st = s["storage"]
        print(f"storage: database {size(st['db_bytes'])} ({size(st['db_free_bytes'])} free), "
              f"{st['blob_count']} blobs {size(st['blob_bytes'])}, dedup saved {size(st['dedup_saved_bytes'])}, "
              f"{st['cache_hits']} cache hits")
    return 0


def cmd_workers(args: argparse.Namespace, client: Client) -> int:
    workers = client.workers()
    if args.json:
        print_json({"workers": workers})
        return 0
    rows = [[w["name"], w["host"], w["pid"], w["state"], f"{w['busy']}/{w['slots']}", w.get("threads") or "-",
             ",".join(w["models"]), f"{w['last_seen_age']:.1f}s", w["done"], w["failed"]] for w in workers]
    print(table(rows, ["NAME", "HOST", "PID", "STATE", "SLOTS", "THREADS", "MODELS", "SEEN", "DONE", "FAILED"]))
    return 0


def cmd_pause(args: argparse.Namespace, client: Client) -> int:
    r = client.pause(args.command == "pause", tenant=args.tenant)
    print_json(r) if args.json else print(f"dispatch {'paused' if r['paused'] else 'resumed'}"
                                          f"{' for tenant ' + args.tenant if args.tenant else ''}")
    return 0


def cmd_tenants(args: argparse.Namespace, client: Client) -> int:
    if args.tenants_command == "set":
        policy = {k: v for k, v in (("weight", args.weight), ("max_running", args.max_running),
                                    ("rate", args.rate), ("max_queued", args.max_queued)) if v is not None}
        r = client.set_tenant(args.tenant, **policy)
        print_json(r) if args.json else print(
            f"tenant {args.tenant}: weight {r['weight']:g}, max running {r['max_running'] or '-'}, "
            f"rate {r['rate'] or '-'}/s, max queued {r['max_queued'] or '-'}")
        return 0
    tenants = client.tenants()
    if args.json:
        print_json({"tenants": tenants})
        return 0
    rows = [[t["tenant"], f"{t['weight']:g}", t["max_running"] or "-", t["rate"] or "-", t["max_queued"] or "-",
             t["queued"], t["running"], t["done"], t["failed"], "yes" if t["paused"] else ""] for t in tenants]
    print(table(rows, ["TENANT", "WEIGHT", "MAX RUN", "RATE", "MAX QUEUED", "QUEUED", "RUNNING", "DONE",
                       "FAILED", "PAUSED"]))
    return 0


def register_stats(sub: Subparsers) -> None:
    """Add stats and workers to `sub`."""
    for name, func, helptext in (("stats", cmd_stats, "queue totals, throughput, workers and storage"),
                                 ("workers", cmd_workers, "connected workers")):
        c = add_command(sub, name, help=helptext)
        client_options(c)
        c.set_defaults(func=func)


def cmd_drain(args: argparse.Namespace, client: Client) -> int:
    r = client.drain_worker(args.worker, drain=not args.resume)
    if args.json:
        print_json(r)
    elif r["draining"]:
        print(f"worker {r['worker']} takes no new tasks; {r['running']} running go on (cutq drain --resume to undo)")
    else:
        print(f"worker {r['worker']} takes tasks again")
    return 0


def register(sub: Subparsers) -> None:
    """Add tenants (with `tenants set`), pause, resume and drain to `sub`."""
    tn = add_command(sub, "tenants", help="tenants: shares, limits and counts",
                     description="Each tenant's share of the workers (weight), limits, task counts and pause "
                                 "flag; `cutq tenants set T ...` changes a tenant's (admin).")
    client_options(tn)
    tsub = tn.add_subparsers(dest="tenants_command", metavar="ACTION", title="actions",
                             help="one of these:")
    ts = tsub.add_parser("set", help="set a tenant's weight and limits (admin)", formatter_class=HelpFormatter,
                         description="Set a tenant's weight and limits (admin); options not given are kept.")
    ts.add_argument("tenant", help="the tenant's name")
    ts.add_argument("--weight", type=float, help="share of the workers relative to other tenants")
    ts.add_argument("--max-running", type=int, metavar="N", help="most tasks running at once (0: no cap)")
    ts.add_argument("--rate", type=float, metavar="PER_S", help="most tasks started per second (0: no cap)")
    ts.add_argument("--max-queued", type=int, metavar="N",
                    help="most tasks queued; submits beyond are refused (0: no cap)")
    # `set` also takes the command's options after its own (`tenants set A --weight 3 --connect X`)
    late_copy(tn, ts)
    tn.set_defaults(func=cmd_tenants)

    for name in ("pause", "resume"):
        c = add_command(sub, name, help=f"{name} dispatch (persisted by the broker)",
                        description=f"{name.capitalize()} dispatch to workers, for every tenant or one "
                                    "(admin); persisted by the broker. Running tasks go on.")
        c.add_argument("--tenant", help="only this tenant's tasks (default: every tenant)")
        client_options(c)
        c.set_defaults(func=cmd_pause)

    d = add_command(sub, "drain", help="a worker takes no new tasks (admin)",
                    description="Stop giving a worker new tasks (admin); what it runs goes on, and it stays "
                                "connected. --resume gives it tasks again.")
    d.add_argument("worker", help="the worker's name or id, as `cutq workers` lists them")
    d.add_argument("--resume", action="store_true", help="give it tasks again (default: drain it)")
    client_options(d)
    d.set_defaults(func=cmd_drain)
