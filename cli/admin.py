"""`cutq stats`, `workers`, `tenants`, `pause` and `resume`: the queue as a whole."""

from __future__ import annotations

import argparse
from typing import Any

from cli.output import counts, print_json, size, table
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


def register_stats(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add stats and workers to `sub`."""
    for name, func, helptext in (("stats", cmd_stats, "queue totals and throughput"),
                                 ("workers", cmd_workers, "connected workers")):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("--json", action="store_true")
        c.set_defaults(func=func)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add tenants (with `tenants set`), pause and resume to `sub`."""
    tn = sub.add_parser("tenants", help="tenants: shares, limits and counts")
    tn.add_argument("--json", action="store_true")
    tsub = tn.add_subparsers(dest="tenants_command", metavar="ACTION")
    # `set` also takes the global flags after its own (`tenants set A --weight 3 --connect X`);
    # SUPPRESS keeps one given before `set` from being reset to its default
    late = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for action in common._actions:
        extra: dict[str, Any] = {"type": action.type} if action.type else {}
        late.add_argument(*action.option_strings, dest=action.dest, action=type(action), help=action.help, **extra)
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
