"""What the dashboard does to the broker: submit, cancel, retry, delete, purge, fetch, pause.

A mixin of `CutqApp`.  Each action checks first that the broker is there (pressed while
it is not, the key is answered with a notification, nothing is queued), asks before
anything destructive, then runs its calls in a worker thread on its own connection and
reports the outcome as a toast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from textual import work

from shared.client import CutqError
from tui import fmt
from tui.screens.confirm import ConfirmScreen
from tui.screens.prompt import FolderPromptScreen
from tui.screens.purge import PurgeRequest, PurgeScreen
from tui.screens.submit import SubmitRequest, SubmitScreen

if TYPE_CHECKING:
    from tui.app import CutqApp


def plural(n: int, word: str) -> str:
    return f"{fmt.count(n)} {word}{'s' * (n != 1)}"


def jobs_text(jobs: list[dict]) -> str:
    return f"job {jobs[0]['job_id']}" if len(jobs) == 1 else plural(len(jobs), "job")


class Actions:
    """Mixed into CutqApp (which supplies feed, conn, notify, push_screen, ...)."""

    def connected_or_say(self: CutqApp, what: str) -> bool:
        """True when the broker answers; else a notification that `what` was not sent."""
        if self.conn.state == "connected":
            return True
        reason = "the broker is unreachable" if self.conn.state == "down" else "still connecting to the broker"
        self.notify(f"{what.capitalize()}: not sent, {reason}. Try again once the status bar says connected.",
                    severity="warning", timeout=5)
        return False

    # ------------------------------------------------------------------ submit

    def action_submit(self: CutqApp) -> None:
        if not self.connected_or_say("submit"):
            return
        models = sorted({m for w in self.worker_book.workers.values() for m in (w.get("models") or [])})
        processors = sorted({p for w in self.worker_book.workers.values() for p in (w.get("processors") or [])})

        def done(req: SubmitRequest | None) -> None:
            if req is not None:
                self._submit(req)

        self.push_screen(SubmitScreen(models=models, processors=processors), done)

    @work(thread=True, group="actions")
    def _submit(self: CutqApp, req: SubmitRequest) -> None:
        self._notify_from_thread(f"Uploading {', '.join(req.paths)[:60]}…", timeout=2)
        try:  # the reply, not submit_paths: its CutqWarning would vanish into this thread's captured stderr
            reply = self.feed.call("submit_paths_reply", req.paths, processor=req.processor, options=req.options,
                                   priority=req.priority)
        except CutqError as e:
            self._notify_from_thread(f"Submit failed: {e}", severity="error")
            return
        if reply.get("warning"):  # taken all the same, e.g. no live worker serves its model: it waits
            self._notify_from_thread(f"Submitted job {reply['job_id']}, with a warning: {reply['warning']}",
                                     severity="warning", timeout=10)
        else:
            self._notify_from_thread(f"Submitted job {reply['job_id']}")

    # ------------------------------------------------------------------ jobs

    def cancel_jobs(self: CutqApp, jobs: list[dict]) -> None:
        """Cancel every queued and running task of these jobs (after a yes)."""
        if not self.connected_or_say("cancel") or not jobs:
            return
        active = [j for j in jobs if int(j.get("queued") or 0) + int(j.get("running") or 0)]
        if not active:
            self.notify(f"{jobs_text(jobs).capitalize()}: nothing left to cancel.", severity="warning")
            return
        if len(active) == 1:
            self.cancel_job(active[0])
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._each("cancel", [(j["job_id"],) for j in active],
                           lambda rs: f"Cancelled {plural(sum(r.get('cancelled', 0) for r in rs), 'task')} "
                                      f"of {plural(len(rs), 'job')}")

        self.push_screen(ConfirmScreen("Cancel", f"Cancel every queued and running task of {plural(len(active), 'job')}"
                                                 f"?\n\nRunning tasks are stopped and their work is lost. You can "
                                                 f"retry them later.", yes="Cancel tasks"), answer)

    def cancel_job(self: CutqApp, job: dict, task_ids: list[int] | None = None) -> None:
        jid = job["job_id"]
        if not self.connected_or_say("cancel"):
            return
        if task_ids is not None and not task_ids:
            self.notify("None of the marked tasks is queued or running.", severity="warning")
            return
        what = f"{plural(len(task_ids), 'marked task')} of job {jid}" if task_ids \
            else f"every queued and running task of job {jid}"
        active = int(job.get("queued") or 0) + int(job.get("running") or 0)
        if task_ids is None and active == 0:
            self.notify(f"Job {jid} has nothing left to cancel.", severity="warning")
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._call("cancel", jid, task_ids, done=lambda r: f"Cancelled {plural(r.get('cancelled', 0), 'task')}"
                                                                 f" of job {jid}")

        self.push_screen(ConfirmScreen("Cancel", f"Cancel {what}?\n\nRunning tasks are stopped and their work is "
                                                 f"lost. You can retry them later.", yes="Cancel tasks"), answer)

    def retry_jobs(self: CutqApp, jobs: list[dict]) -> None:
        """Re-queue every failed task of these jobs (cancelled ones stay cancelled)."""
        if not self.connected_or_say("retry") or not jobs:
            return
        failed = [j for j in jobs if int(j.get("failed") or 0)]
        if not failed:
            self.notify(f"{jobs_text(jobs).capitalize()}: no failed tasks to retry.", severity="warning")
            return
        self._each("retry_failed", [(j["job_id"],) for j in failed],
                   lambda rs: f"Re-queued {plural(sum(r.get('requeued', 0) for r in rs), 'failed task')} "
                              f"of {jobs_text(failed)}")

    def retry_job(self: CutqApp, job: dict, task_ids: list[int] | None = None, failed_only: bool = False) -> None:
        """Re-queue the given tasks, or every failed and cancelled one (failed ones only if asked)."""
        jid = job["job_id"]
        if not self.connected_or_say("retry"):
            return
        if task_ids is not None and not task_ids:
            self.notify("None of the marked tasks has failed or was cancelled.", severity="warning")
            return
        if failed_only:
            self.retry_jobs([job])
            return
        if task_ids is None and not int(job.get("failed") or 0) + int(job.get("cancelled") or 0):
            self.notify(f"Job {jid} has no failed or cancelled tasks to retry.", severity="warning")
            return
        self._call("retry", jid, task_ids, done=lambda r: f"Re-queued {plural(r.get('requeued', 0), 'task')} "
                                                          f"of job {jid}")

    def delete_jobs(self: CutqApp, jobs: list[dict]) -> None:
        """Delete jobs with their images and results (after a yes); running tasks are cancelled first."""
        if not self.connected_or_say("delete") or not jobs:
            return
        ids = [j["job_id"] for j in jobs]
        running = sum(int(j.get("queued") or 0) + int(j.get("running") or 0) for j in jobs)
        body = f"Delete {jobs_text(jobs)} with {plural(sum(int(j.get('total') or 0) for j in jobs), 'image')} " \
               f"and their results?"
        if running:
            body += f"\n\n{plural(running, 'task')} still queued or running will be cancelled first."
        body += "\n\nThis cannot be undone."

        def answer(yes: bool | None) -> None:
            if yes:
                self._each("delete", [(jid,) for jid in ids], lambda rs: f"Deleted {jobs_text(jobs)}",
                           after=lambda: self.jobs_deleted(ids))

        self.push_screen(ConfirmScreen("Delete", body, yes="Delete"), answer)

    def purge(self: CutqApp) -> None:
        """Delete every finished job matching a filter (asked in a dialog, then confirmed)."""
        if not self.connected_or_say("purge"):
            return

        def confirmed(req: PurgeRequest, yes: bool | None) -> None:
            if yes:
                self._call("purge", req.state, req.older_than_s, done=lambda r: f"Purged {plural(r['deleted'], 'job')}",
                           after=lambda: self.jobs_deleted([]))

        def chosen(req: PurgeRequest | None) -> None:
            if req is not None:
                self.push_screen(ConfirmScreen("Purge", f"Delete {req.describe()}, with their images and results?"
                                                        f"\n\nThis cannot be undone.", yes="Purge"),
                                 lambda yes: confirmed(req, yes))

        self.push_screen(PurgeScreen(), chosen)

    def fetch_job(self: CutqApp, job: dict) -> None:
        jid = job["job_id"]
        if not self.connected_or_say("fetch"):
            return
        if not int(job.get("done") or 0):
            self.notify(f"Job {jid} has no finished results yet.", severity="warning")
            return

        def chosen(folder: str | None) -> None:
            if folder:
                self._call("fetch", jid, folder, done=lambda paths: f"Wrote {len(paths)} file(s) to {folder}")

        self.push_screen(FolderPromptScreen("Fetch results", f"Write the results of job {jid} to this folder:",
                                            default=f"./cutq-results/{jid}", ok="Fetch"), chosen)

    def action_pause(self: CutqApp) -> None:
        if self.connected_or_say("pause"):
            self._call("pause", True, done=lambda r: "Dispatch paused: running tasks finish, no new ones start")

    def action_resume(self: CutqApp) -> None:
        if self.connected_or_say("resume"):
            self._call("pause", False, done=lambda r: "Dispatch resumed")

    # ------------------------------------------------------------------ plumbing

    @work(thread=True, group="actions")
    def _call(self: CutqApp, method: str, *args: Any, done: Callable[[Any], str],
              after: Callable[[], None] | None = None) -> None:
        """Run one client call off the UI thread and report the outcome as a toast."""
        try:
            result = self.feed.call(method, *args)
        except CutqError as e:
            self._notify_from_thread(f"{method.replace('_', ' ')} failed: {e}", severity="error")
            return
        self._notify_from_thread(done(result))
        if after is not None:
            self.call_from_thread(after)

    @work(thread=True, group="actions")
    def _each(self: CutqApp, method: str, calls: list[tuple], done: Callable[[list[Any]], str],
              after: Callable[[], None] | None = None) -> None:
        """One call per job on one connection; the failures are listed, the rest summed up."""
        try:
            results = self.feed.call_each(method, calls)
        except CutqError as e:
            self._notify_from_thread(f"{method.replace('_', ' ')} stopped: {e}", severity="error")
            if after is not None:
                self.call_from_thread(after)
            return
        ok = [r for r in results if not isinstance(r, CutqError)]
        failed = [(args[0], r) for args, r in zip(calls, results, strict=True) if isinstance(r, CutqError)]
        if ok:
            self._notify_from_thread(done(ok))
        for jid, err in failed[:3]:
            self._notify_from_thread(f"{method.replace('_', ' ')} of job {jid} failed: {err}", severity="error")
        if len(failed) > 3:
            self._notify_from_thread(f"… and {len(failed) - 3} more failed", severity="error")
        if after is not None:
            self.call_from_thread(after)

    def _notify_from_thread(self: CutqApp, text: str, severity: str = "information", timeout: float = 4) -> None:
        self.call_from_thread(self.notify, text, severity=severity, timeout=timeout)  # type: ignore[arg-type]
