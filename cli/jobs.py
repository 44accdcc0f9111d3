"""`cutq submit`, `status`, `watch`, `list`, `cancel`, `retry` and `fetch`: one job's life.

Every command that names a job takes its id or any unique prefix of one (the broker
resolves it; an ambiguous prefix is refused with the candidates, exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from cli.output import LiveLine, UploadLine, ago, counts, print_json, table, watch_line
from cli.parsing import (
    Subparsers,
    add_command,
    client_options,
    job_argument,
    non_negative_int,
    positive_float,
    positive_int,
)
from shared.client import JOB_SORTS, MAX_MESSAGE_BYTES, Client
from shared.config import DEFAULT_MODEL
from shared.options import KNOWN_MODELS, PROCESSORS
from shared.results import make_folder
from shared.states import TASK_STATES, TERMINAL, TaskState
from shared.uploads import collect_images

FAILURES_SHOWN = 20  # failed tasks named one per line; the rest are counted
STATUS_PAGE = 50  # rows of `cutq status`'s task table, unless --per-page says otherwise
STATS_EVERY = 2.0  # seconds between `cutq watch`'s looks at the queue (paused? workers?)


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


def _print_failures(tasks: list[dict[str, Any]], indent: str = "  ") -> None:
    """One stderr line per task that is not done (its name, state and error), the first FAILURES_SHOWN."""
    for t in tasks[:FAILURES_SHOWN]:
        error = f": {t['error']}" if t.get("error") else ""
        print(f"{indent}task {t['task_id']} {t['name']}: {t['state']}{error}", file=sys.stderr)
    if len(tasks) > FAILURES_SHOWN:
        print(f"{indent}... and {len(tasks) - FAILURES_SHOWN} more (cutq status JOB --state failed)", file=sys.stderr)


def _failure_records(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"task_id": t["task_id"], "name": t["name"], "state": t["state"], "error": t.get("error")}
            for t in tasks]


def _submit(args: argparse.Namespace, client: Client, files: list[Path]) -> tuple[str, str | None]:
    """The job id, and the broker's warning about the job if it gave one (said as one line)."""
    line = UploadLine(sys.stderr) if sys.stderr.isatty() else None
    try:
        reply = client.submit_paths_reply(files, processor=args.processor, options=_options(args),
                                          priority=args.priority, tenant=args.tenant, no_cache=args.no_cache,
                                          progress=line, webhook=args.webhook)
    finally:
        if line is not None:
            line.end()
    warning = reply.get("warning")
    return str(reply["job_id"]), " ".join(str(warning).split()) if warning else None


def cmd_submit(args: argparse.Namespace, client: Client) -> int:
    """Names and sizes are checked before anything is sent; files are read part by part as they go.
    A warning from the broker (e.g. no live worker serves the model) is one `warning: ...` line on
    stderr, and `warning` in the JSON."""
    files = collect_images(args.files)
    if args.out:
        make_folder(Path(args.out))  # a folder that cannot be made is said now, not after the job ran
    client.max_message_bytes = int(args.max_message_mb * 1024 * 1024)
    job_id, warning = _submit(args, client, files)
    noted = {"warning": warning} if warning else {}
    if not args.wait:
        if args.json:
            print_json({"job_id": job_id, "tasks": len(files), **noted})
        else:
            print(f"submitted job {job_id} with {len(files)} image(s)")
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        return 0
    if sys.stderr.isatty():
        print(f"submitted job {job_id} with {len(files)} image(s); waiting for it "
              "(Ctrl-C stops waiting, not the job)", file=sys.stderr)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        status = client.wait(job_id)
    except KeyboardInterrupt:
        print(f"cutq: interrupted: job {job_id} keeps running (cutq watch {job_id}; cutq cancel {job_id})",
              file=sys.stderr)
        return 130
    problems: list[str] = []
    written = client.fetch(job_id, args.out, problems=problems) if args.out else []
    failures = [t for t in status["tasks"] if t["state"] != TaskState.DONE]
    if args.json:
        print_json({"job_id": job_id, **{k: status[k] for k in ("state", *TASK_STATES)},
                    "written": [str(w) for w in written], "failures": _failure_records(failures), **noted})
    else:
        print(f"job {job_id} {status['state']}: {counts(status)}")
        for w in written:
            print(f"  wrote {w}")
        _print_failures(failures)
    _print_fetch_problems(problems)
    return 0 if not failures and not problems else 1


def cmd_status(args: argparse.Namespace, client: Client) -> int:
    paged = not args.json or args.page is not None or args.per_page is not None
    per_page = (STATUS_PAGE if args.per_page is None else args.per_page) if paged else 0
    page = args.page or 1
    status = client.status(args.job, task_state=args.state, task_limit=per_page,
                           task_offset=(page - 1) * per_page if per_page else 0)
    if args.json:
        print_json(status)
        return 0
    where = f", {status['position']} task(s) ahead" if status.get("position") else ""
    eta = f", done in ~{status['eta_s']:.0f}s" if status.get("eta_s") is not None else ""
    print(f"job {status['job_id']}  {status['state']}  {status['done']}/{status['total']} done  "
          f"processor={status['processor']} model={status['model'] or '-'} tenant={status['tenant']}{where}{eta}")
    print(f"  {counts(status)}   submitted {ago(status['created'])}  finished {ago(status['finished'])}")
    rows = [[t["task_id"], t["name"], t["state"] + (" (cached)" if t.get("cached") else ""), t["attempts"],
             t["worker"] or "-", t["error"] or ""] for t in status["tasks"]]
    print(table(rows, ["TASK", "FILE", "STATE", "ATTEMPTS", "WORKER", "ERROR"]))
    matching = status[args.state] if args.state else status["total"]
    if per_page and (matching > per_page or page > 1):
        first = (page - 1) * per_page
        pages = max(1, -(-matching // per_page))
        shown = f"tasks {first + 1}-{first + len(rows)}" if rows else "no tasks"
        more = f"; --page {page + 1} for more" if page < pages else ""
        print(f"({shown} of {matching}{' ' + args.state if args.state else ''}, page {page} of {pages}{more})")
    return 0


def _dispatch_note(client: Client, status: dict[str, Any]) -> str:
    """Why a queued job may not move: dispatch paused (for all or its tenant), or no workers."""
    s = client.stats()
    if s.get("paused"):
        return "dispatch paused"
    if status.get("tenant") in (s.get("paused_tenants") or ()):
        return f"dispatch paused for tenant {status['tenant']}"
    if status["queued"] and not s.get("workers_total"):
        return "no workers"
    return ""


def _columns() -> int:
    """The terminal's width now (it may have been resized): asked of the terminal itself, since a
    $COLUMNS exported by a shell says only what it was then; else shutil's guess."""
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns or shutil.get_terminal_size().columns
    except (OSError, ValueError):
        return shutil.get_terminal_size().columns


class _WatchView:
    """How `cutq watch` shows each state: one line redrawn in place on a terminal, else a line
    (or a JSON object) each time something changes."""

    def __init__(self, json_lines: bool) -> None:
        self.json = json_lines
        self.live = LiveLine(sys.stdout) if sys.stdout.isatty() and not json_lines else None
        self.last: Any = None

    def show(self, status: dict[str, Any], note: str) -> None:
        if self.live is not None:
            columns = _columns()
            line = watch_line(status, columns - 1, note)
            if (line, columns) != self.last:
                self.live.draw(line, columns)
            self.last = (line, columns)
            return
        if self.json:
            record = {k: status[k] for k in ("job_id", "state", "total", *TASK_STATES)}
            record["note"] = note or None
            if record != self.last:
                print(json.dumps(record), flush=True)
            self.last = record
            return
        text = watch_line(status, 200, note)
        if text != self.last:
            print(text, flush=True)
        self.last = text

    def end(self) -> None:
        if self.live is not None:
            self.live.end()


def cmd_watch(args: argparse.Namespace, client: Client) -> int:
    status = client.status(args.job, tasks=False)
    job_id = status["job_id"]  # the whole id, when a prefix named the job
    client.subscribe(job_id)
    view = _WatchView(args.json)
    note, next_look, last_status = "", 0.0, time.monotonic()
    try:
        while True:
            if status["state"] not in TERMINAL and time.monotonic() >= next_look:
                note, next_look = _dispatch_note(client, status), time.monotonic() + STATS_EVERY
            view.show(status, "" if status["state"] in TERMINAL else note)
            if status["state"] in TERMINAL:
                break
            for e in client.next_events(1.0):
                if e.get("kind") == "job" and e.get("job_id") == job_id:
                    status, last_status = {**status, **e}, time.monotonic()
            if time.monotonic() - last_status >= STATS_EVERY:  # a missed event never stalls the view
                status, last_status = client.status(job_id, tasks=False), time.monotonic()
    finally:
        view.end()
    return 0 if status["state"] == TaskState.DONE else 1


def cmd_list(args: argparse.Namespace, client: Client) -> int:
    page = client.list_jobs(args.state, search=args.search, limit=args.limit, offset=args.offset,
                            sort=args.sort, descending=not args.asc)
    if args.json:
        print_json(page)
        return 0
    rows = [[j["job_id"], ago(j["created"]), j.get("tenant", "-"), j["processor"], j["model"] or "-", j["state"],
             f"{j['done']}/{j['total']}", j["failed"]] for j in page["jobs"]]
    print(table(rows, ["JOB", "SUBMITTED", "TENANT", "PROCESSOR", "MODEL", "STATE", "DONE", "FAILED"]))
    first = args.offset + 1 if page["jobs"] else 0
    print(f"(jobs {first}-{args.offset + len(page['jobs'])} of {page['total']}, by {args.sort}"
          f"{' ascending' if args.asc else ''})")
    return 0


def _whole_id(client: Client, reply: dict[str, Any], job: str) -> str:
    """The job's whole id: from the reply when it says, else asked (a prefix may have named it)."""
    whole = reply.get("job_id")
    if isinstance(whole, str) and whole:
        return whole
    return job if len(job) >= 12 else str(client.status(job, tasks=False)["job_id"])


def cmd_cancel(args: argparse.Namespace, client: Client) -> int:
    r = client.cancel(args.job)
    if args.json:
        print_json(r)
    else:
        print(f"cancelled {r['cancelled']} task(s) of job {_whole_id(client, r, args.job)}")
    return 0


def cmd_retry(args: argparse.Namespace, client: Client) -> int:
    r = client.retry(args.job)
    if args.json:
        print_json(r)
    else:
        print(f"re-queued {r['requeued']} task(s) of job {_whole_id(client, r, args.job)}")
    return 0


def cmd_fetch(args: argparse.Namespace, client: Client) -> int:
    """Write every done result; one stderr line per task not done (failed, cancelled, unfinished) and
    per result that could not be written.  Exit 1 unless every task is done and written."""
    problems: list[str] = []
    not_done: list[dict[str, Any]] = []
    written = client.fetch(args.job, args.out, problems=problems, not_done=not_done)
    if args.json:
        print_json({"written": [str(w) for w in written], "failures": _failure_records(not_done),
                    **({"errors": problems} if problems else {})})
    else:
        for w in written:
            print(f"wrote {w}")
        summary = f"{len(written)} result(s) in {args.out}"
        by_state = {s: sum(1 for t in not_done if t["state"] == s) for s in TASK_STATES}
        missing = ", ".join(f"{n} {s}" for s, n in by_state.items() if n)
        print(summary + (f"; not done: {missing}" if missing else ""))
        _print_failures([t for t in not_done if t["state"] in (TaskState.FAILED, TaskState.CANCELLED)], indent="cutq: ")
    _print_fetch_problems(problems)
    return 1 if problems or not_done else 0


def register(sub: Subparsers) -> None:
    """Add submit, status, watch, cancel, retry, fetch and list to `sub`."""
    s = add_command(sub, "submit", help="submit images (files or directories) as one job",
                    description="Submit images as one job: each file, and each image file directly in a "
                                "directory given, is a task. Prints the job id; --wait waits for the job "
                                "(exit 0 only if every image is done) and --out writes the results.")
    s.add_argument("files", nargs="+", metavar="FILE", help="image files and directories (not recursive)")
    s.add_argument("--model", "-m", default=DEFAULT_MODEL, metavar="MODEL",
                   help=f"rembg model: {', '.join(KNOWN_MODELS)}, or another one a worker announces "
                        "(default %(default)s)")
    s.add_argument("--processor", default="rembg", choices=PROCESSORS,
                   help="rembg: remove the background; noop: return the input (a health check); "
                        "sleep: wait --seconds (a test)")
    s.add_argument("--alpha-matting", action="store_true",
                   help="refine the mask's edges by alpha matting (slower; hair, fur)")
    s.add_argument("--fg-threshold", type=int, default=240, metavar="0-255",
                   help="alpha matting: mask values above this are foreground")
    s.add_argument("--bg-threshold", type=int, default=10, metavar="0-255",
                   help="alpha matting: mask values below this are background")
    s.add_argument("--erode-size", type=int, default=10, metavar="PIXELS",
                   help="alpha matting: erosion of the uncertain band")
    s.add_argument("--only-mask", action="store_true", help="return the mask, not the cut-out")
    s.add_argument("--post-process-mask", action="store_true", help="smooth the mask before applying it")
    s.add_argument("--bgcolor", metavar="#RRGGBB[AA]", help="replace the background with this colour "
                                                             "(default: transparent)")
    s.add_argument("--format", default="png", choices=["png", "webp"], help="the results' image format")
    s.add_argument("--seconds", type=float, default=1.0, help="(sleep processor) seconds per task")
    s.add_argument("--priority", type=int, default=0,
                   help="higher runs first among the tenant's queued tasks; negative runs later")
    s.add_argument("--tenant", default="default",
                   help="whose job this is (default: the tenant named 'default'; a client key: its own)")
    s.add_argument("--webhook", metavar="URL", default=None,
                   help="POST a signed JSON summary to this http(s) URL when the job ends (see README, Webhooks)")
    s.add_argument("--no-cache", action="store_true",
                   help="run every image even if an equal one (same bytes, processor and options) has a result")
    s.add_argument("--max-message-mb", type=positive_float, default=MAX_MESSAGE_BYTES / 1024 / 1024,
                   metavar="MIB",
                   help="the broker's --max-message-mb: a bigger image is refused before sending (default %(default)g)")
    s.add_argument("--wait", action="store_true",
                   help="wait until the job ends, then print its outcome (Ctrl-C stops waiting; the job goes on)")
    s.add_argument("--out", metavar="DIR", help="with --wait: write results into DIR as <stem>.<ext>")
    client_options(s)
    s.set_defaults(func=cmd_submit)

    st = add_command(sub, "status", help="a job's state and its tasks (a page at a time)",
                     description="A job's state, counts, place in the queue and its task table, a page at a "
                                 "time (paged by the broker).")
    job_argument(st)
    st.add_argument("--state", choices=TASK_STATES, help="only tasks in this state (default: all)")
    st.add_argument("--page", type=positive_int, metavar="N", help="which page of the task table (default 1)")
    st.add_argument("--per-page", type=non_negative_int, metavar="N",
                    help=f"tasks per page, 0 for all (default {STATUS_PAGE}; with --json and no --page: all)")
    client_options(st)
    st.set_defaults(func=cmd_status)

    for name, func, helptext, description in (
            ("watch", cmd_watch, "live progress of a job until it ends",
             "Live progress of a job until it ends: one line redrawn in place on a terminal (a line per "
             "change otherwise), saying when dispatch is paused. Exit 0 if the job is done, 1 otherwise."),
            ("cancel", cmd_cancel, "cancel a job's queued and running tasks", None),
            ("retry", cmd_retry, "re-queue a job's failed and cancelled tasks", None)):
        c = add_command(sub, name, help=helptext, description=description)
        job_argument(c)
        client_options(c)
        c.set_defaults(func=func)

    f = add_command(sub, "fetch", help="write a job's results to a directory",
                    description="Write every done result of a job into a directory, each as <stem>.<ext>; "
                                "names the tasks that are not done. Exit 0 only if every task is done and "
                                "written.")
    job_argument(f)
    f.add_argument("--out", required=True, metavar="DIR", help="the folder to write into (made if need be)")
    client_options(f)
    f.set_defaults(func=cmd_fetch)

    li = add_command(sub, "list", help="jobs, newest first (or sorted)",
                     description="A page of jobs, sorted by the broker over every job (newest first unless "
                                 "--sort or --asc say otherwise).")
    li.add_argument("--state", choices=TASK_STATES, help="only jobs in this state (default: all)")
    li.add_argument("--search", help="only jobs whose id, or the name of one of whose files, starts with this")
    li.add_argument("--sort", choices=JOB_SORTS, default="created",
                    help="sort every job by submission time, state, progress, failed tasks or tenant")
    li.add_argument("--asc", action="store_true", help="ascending (oldest, least first) instead of descending")
    li.add_argument("--limit", type=positive_int, default=50, metavar="N", help="jobs per page (at most 1000)")
    li.add_argument("--offset", type=non_negative_int, default=0, metavar="N", help="jobs to skip")
    client_options(li)
    li.set_defaults(func=cmd_list)
