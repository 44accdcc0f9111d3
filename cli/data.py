"""`cutq delete`, `purge` and `backup`: what the broker keeps, removed or copied."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.daemons import duration
from cli.output import print_json, size
from cli.parsing import Subparsers, add_command, client_options, data_dir, job_argument
from shared.client import Client
from shared.states import TASK_STATES, TERMINAL

FINAL_STATES = tuple(s for s in TASK_STATES if s in TERMINAL)  # done, failed, cancelled: what purge takes


def cmd_delete(args: argparse.Namespace, client: Client) -> int:
    r = client.delete(args.job)
    print_json(r) if args.json else print(f"deleted job {r.get('job_id') or args.job} with its images and results")
    return 0


def cmd_purge(args: argparse.Namespace, client: Client) -> int:
    r = client.purge(args.state, older_than_s=args.older_than, tenant=args.tenant)
    print_json(r) if args.json else print(f"purged {r['deleted']} finished job(s)")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """Runs on the broker's machine, beside the running broker; no connection to it."""
    from broker.backup import BackupError, backup

    try:
        report = backup(Path(args.data), Path(args.dest), link=not args.copy)
    except BackupError as e:
        print(f"cutq: backup failed: {e}", file=sys.stderr)
        return 1
    if args.json:
        print_json(report.as_dict())
        return 0
    c = report.counts
    tasks = sum(n for k, n in c.items() if k.startswith("tasks_"))
    print(f"backed up {c['jobs']} job(s), {tasks} task(s) ({c.get('tasks_done', 0)} done) and {report.blobs} "
          f"blob(s) ({size(report.blob_bytes)}: {report.linked} hard-linked, {report.copied} copied), "
          f"{report.key_files} key file(s) to {report.dest} in {report.seconds:.1f}s")
    return 0


def register(sub: Subparsers) -> None:
    """Add delete, purge and backup to `sub`."""
    d = add_command(sub, "delete", help="cancel a job, then remove it with its images and results")
    job_argument(d)
    client_options(d)
    d.set_defaults(func=cmd_delete)

    p = add_command(sub, "purge", help="delete finished jobs (a client key: its own tenant's only)",
                    description="Delete finished jobs with their images and results; the filters combine. "
                                "A client key purges its own tenant's only.")
    p.add_argument("--state", choices=FINAL_STATES, help="only jobs in this state (default: any finished)")
    p.add_argument("--older-than", type=duration, metavar="DURATION",
                   help="only jobs submitted at least this long ago: 30s, 15m, 1h, 7d (default: any age)")
    p.add_argument("--tenant", help="only this tenant's jobs (admin; default: every tenant)")
    client_options(p)
    p.set_defaults(func=cmd_purge)

    b = add_command(sub, "backup", help="copy the broker's database, images and keys while it runs "
                                        "(on the broker's machine)")
    b.add_argument("dest", help="a new or empty folder")
    data_dir(b)
    b.add_argument("--copy", action="store_true",
                   help="copy the images even when DEST is on the same file system (default: hard links)")
    b.add_argument("--json", action="store_true", help="print JSON instead of text")
    b.set_defaults(func=cmd_backup, daemon=True)
