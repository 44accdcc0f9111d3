"""`cutq submit`, `status`, `watch`, `list`, `cancel`, `retry` and `fetch`: one job's life."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli.output import UploadLine, ago, bar, counts, print_json, table
from shared.client import MAX_MESSAGE_BYTES, Client, collect_images
from shared.config import DEFAULT_MODEL
from shared.options import PROCESSORS
from shared.states import TASK_STATES, TERMINAL


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


def _print_fetch_problems(problems: list[str]) -> None:
    for line in problems:
        print(f"cutq: {line}", file=sys.stderr)


def cmd_submit(args: argparse.Namespace, client: Client) -> int:
    """Names and sizes are checked before anything is sent; files are read part by part as they go."""
    files = collect_images(args.files)
    client.max_message_bytes = int(args.max_message_mb * 1024 * 1024)
    line = UploadLine(sys.stderr) if sys.stderr.isatty() else None
    try:
        job_id = client.submit_paths(files, processor=args.processor, options=_options(args),
                                     priority=args.priority, tenant=args.tenant, no_cache=args.no_cache,
                                     progress=line)
    finally:
        if line is not None:
            line.end()
    if not args.wait:
        if args.json:
            print_json({"job_id": job_id, "tasks": len(files)})
        else:
            print(f"submitted job {job_id} with {len(files)} image(s)")
        return 0
    status = client.wait(job_id, timeout=args.timeout)
    problems: list[str] = []
    written = client.fetch(job_id, args.out, problems=problems) if args.out else []
    failures = [t for t in status["tasks"] if t["state"] != "done"]
    if args.json:
        print_json({"job_id": job_id, **{k: status[k] for k in ("state", *TASK_STATES)},
                    "written": [str(w) for w in written],
                    "failures": [{"name": t["name"], "state": t["state"], "error": t["error"]} for t in failures]})
    else:
        print(f"job {job_id} {status['state']}: {counts(status)}")
        for w in written:
            print(f"  wrote {w}")
        for t in failures:
            print(f"  {t['name']}: {t['state']}{': ' + t['error'] if t['error'] else ''}", file=sys.stderr)
    _print_fetch_problems(problems)
    return 0 if not failures and not problems else 1


def cmd_status(args: argparse.Namespace, client: Client) -> int:
    status = client.status(args.job)
    if args.json:
        print_json(status)
        return 0
    print(f"job {status['job_id']}  {status['state']}  {status['done']}/{status['total']} done  "
          f"processor={status['processor']} model={status['model']} tenant={status['tenant']}")
    print(f"  {counts(status)}   submitted {ago(status['created'])}  finished {ago(status['finished'])}")
    rows = [[t["task_id"], t["name"], t["state"] + (" (cached)" if t.get("cached") else ""), t["attempts"],
             t["worker"] or "-", t["error"] or ""] for t in status["tasks"]]
    print(table(rows, ["TASK", "FILE", "STATE", "ATTEMPTS", "WORKER", "ERROR"]))
    return 0


def cmd_watch(args: argparse.Namespace, client: Client) -> int:
    status = client.status(args.job, tasks=False)
    client.subscribe(args.job)
    tty = sys.stdout.isatty()
    last = None
    while True:
        ended = status["total"] - status["queued"] - status["running"]
        line = (f"{status['job_id']} {bar(ended, status['total'])} {ended}/{status['total']} "
                f"{status['state']}  {counts(status)}")
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
        print_json(page)
        return 0
    rows = [[j["job_id"], ago(j["created"]), j["processor"], j["model"] or "-", j["state"],
             f"{j['done']}/{j['total']}", j["failed"]] for j in page["jobs"]]
    print(table(rows, ["JOB", "SUBMITTED", "PROCESSOR", "MODEL", "STATE", "DONE", "FAILED"]))
    print(f"({len(page['jobs'])} of {page['total']} jobs)")
    return 0


def cmd_cancel(args: argparse.Namespace, client: Client) -> int:
    r = client.cancel(args.job)
    print_json(r) if args.json else print(f"cancelled {r['cancelled']} task(s) of job {args.job}")
    return 0


def cmd_retry(args: argparse.Namespace, client: Client) -> int:
    r = client.retry(args.job)
    print_json(r) if args.json else print(f"re-queued {r['requeued']} task(s) of job {args.job}")
    return 0


def cmd_fetch(args: argparse.Namespace, client: Client) -> int:
    """Write every done result; one line on stderr per result that could not be written (exit 1)."""
    problems: list[str] = []
    written = client.fetch(args.job, args.out, problems=problems)
    if args.json:
        print_json({"written": [str(w) for w in written], **({"errors": problems} if problems else {})})
    else:
        for w in written:
            print(f"wrote {w}")
        print(f"{len(written)} result(s) in {args.out}")
    _print_fetch_problems(problems)
    return 1 if problems else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add submit, status, watch, cancel, retry, fetch and list to `sub`."""
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
    s.add_argument("--no-cache", action="store_true",
                   help="run every image even if an equal one (same bytes, processor and options) has a result")
    s.add_argument("--max-message-mb", type=float, default=MAX_MESSAGE_BYTES / 1024 / 1024,
                   help="the broker's --max-message-mb: a bigger image is refused before sending (default %(default)g)")
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
