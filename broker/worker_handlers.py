"""Handlers for what workers send: announce, heartbeat, progress, results, goodbye.

A worker is known by its routing id and bound to the key that announced it; a
message on a known id from another key is ignored.  Results count only for the
attempt the broker last dispatched to that worker.
"""

from __future__ import annotations

import functools
import logging

from broker.blobio import describe
from broker.core import Core
from broker.intake import Handler
from broker.keys import Principal
from broker.registry import WorkerRecord
from broker.store import BlobRef, Finished
from shared import protocol as p
from shared.config import RESULT_EXTENSIONS

log = logging.getLogger("cutq.broker")
Done = tuple[p.TaskResult, BlobRef, str]  # a success to record: the result, its stored bytes, their format


class WorkerHandlers:
    """One method per worker message type; `table()` maps message types to them."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def table(self) -> dict[type, Handler]:
        return {p.Ready: self.ready, p.Heartbeat: self.heartbeat, p.Results: self.results,
                p.Progress: self.progress, p.Goodbye: self.goodbye}

    def _known(self, ident: bytes, who: Principal) -> WorkerRecord | None:
        """The live worker on `ident` if `who` owns it; an unknown one is told to announce again."""
        w = self.core.registry.get_alive(ident)
        if w is None:
            self.core.out.frames.append((ident, p.encode(p.Disconnect(reason="unknown worker: announce again"))))
            return None
        if w.user != who.name:
            self.core.warnings.warn("identity", "key %s sent on worker %s's identity: ignored", who.name, w.name)
            return None
        w.last_seen = self.core.clock()
        return w

    def ready(self, ident: bytes, msg: p.Ready, who: Principal) -> None:
        core = self.core
        now = core.clock()
        old = core.registry.workers.get(ident)
        reported = {pair[0]: pair[1] for pair in msg.running if len(pair) == 2}
        carried: dict[int, int] = {}
        if old is not None and old.state == "alive":
            if old.user != who.name:
                core.warnings.warn("identity", "key %s tried to take over worker %s's identity: ignored",
                                   who.name, old.name)
                return
            # the same worker announcing again (it reconnected): what it still holds stays
            # its own; what it never got was lost on the old connection, not by its fault
            for task_id, attempt in list(old.running.items()):
                if reported.get(task_id) == attempt:
                    carried[task_id] = attempt
                    old.running.pop(task_id)
                else:
                    core.hand_back(old, task_id, attempt)
            old.state = "left"
        w = WorkerRecord(
            ident=ident, name=msg.name or ident.decode(errors="replace"), host=msg.host, pid=msg.pid,
            slots=max(0, msg.slots), models=msg.models, providers=msg.providers, processors=msg.processors,
            joined=now, last_seen=now, user=who.name, model_files=dict(msg.model_files), threads=msg.threads,
        )
        core.registry.workers[ident] = w
        w.running.update(carried)
        for task_id, attempt in reported.items():
            if task_id in carried:
                continue
            if core.store.adopt(task_id, attempt, ident.decode(errors="replace")):
                w.running[task_id] = attempt
                job = core.store.job(core.store.task_job(task_id) or "")
                core.running_tenant[task_id] = job["tenant"] if job else "default"
            else:
                core.out.cancels[ident].append(task_id)  # superseded: stop it, don't return it
        log.info("worker %s joined from %s pid %d with %d slots", w.name, w.host, w.pid, w.slots)
        core.out.worker_events.append({"kind": "worker", "worker": w.name, "state": "joined"})

    def heartbeat(self, ident: bytes, msg: p.Heartbeat, who: Principal) -> None:
        w = self._known(ident, who)
        if w is None:
            return
        if msg.draining:
            w.draining = True
        if msg.model_files is not None:  # weights added to (or removed from) its model dir
            w.model_files = {k: v for k, v in msg.model_files.items() if isinstance(v, str)}
        if msg.models is not None:  # loaded: what the broker sent it stays loaded in some slot
            w.models = sorted(set(w.models).union(m for m in msg.models if isinstance(m, str)))

    def progress(self, ident: bytes, msg: p.Progress, who: Principal) -> None:
        w = self._known(ident, who)
        if w is None or w.running.get(msg.task_id) != msg.attempt:
            return
        job_id = self.core.store.task_job(msg.task_id)
        self.core.out.worker_events.append({
            "kind": "progress", "job_id": job_id, "task_id": msg.task_id, "stage": msg.stage,
            "fraction": msg.fraction, "worker": w.name, "t": self.core.wall()})

    def results(self, ident: bytes, msg: p.Results, who: Principal) -> None:
        core = self.core
        w = self._known(ident, who)
        if w is None:
            return  # results of a worker we declared dead are discarded; its tasks were re-queued
        blobs = iter(msg.blobs)
        small: list[Done] = []  # successes kept in the database: recorded together, below
        for r in msg.results:  # entries were type-checked on decode (p.TaskResult)
            data = next(blobs, None) if r["ok"] else None
            if r["ok"] and data is None:
                core.warnings.warn("malformed", "dropped a result without its bytes from %r", ident[:16])
                continue
            if w.running.get(r["task_id"]) != r["attempt"]:
                continue  # cancelled or superseded meanwhile: the late result is dropped
            # the slot is free; the task still counts against its tenant's running cap until
            # its result is recorded (the rows say running until then)
            w.running.pop(r["task_id"])
            w.finished_at.append(core.clock())
            self._apply(w, r, data, small)
        if small:
            self._complete(w, small)

    def _apply(self, w: WorkerRecord, r: p.TaskResult, data: bytes | None, small: list[Done]) -> None:
        """Record one result: a failure now; a small success into `small`; a big one once its
        bytes are durable (written off the loop)."""
        ext = r.get("ext") or "png"
        error, kind = r.get("error") or "unknown error", r.get("error_kind") or "transient"
        if r["ok"] and ext not in RESULT_EXTENSIONS:
            # a worker names the stored file's format: accept only formats cutq makes
            error, kind = f"worker {w.name} returned a result in an unknown format {ext[:40]!r}", "transient"
        elif r["ok"] and data is not None:
            inline = self.core.inline_refs([data])
            if inline is not None:  # into this turn's transaction, no thread, no file
                small.append((r, inline[0], ext))
            else:
                self._store_result(w, r, data, ext)
            return
        self._fail(w, r, error, kind)

    def _fail(self, w: WorkerRecord, r: p.TaskResult, error: str, kind: str) -> None:
        core = self.core
        core.redoable.append(functools.partial(self._fail, w, r, error, kind))  # again if the turn fails
        core.running_tenant.pop(r["task_id"], None)
        w.failed += 1
        core.record_failure(r["task_id"], r["attempt"], w.ident.decode(errors="replace"), error, kind)

    def _store_result(self, w: WorkerRecord, r: p.TaskResult, data: bytes, ext: str) -> None:
        self.core.blobio.write([data], functools.partial(self._stored, w, r, data, ext))

    def _stored(self, w: WorkerRecord, r: p.TaskResult, data: bytes, ext: str, result: list[str] | OSError) -> None:
        if isinstance(result, OSError):  # disk full: keep the bytes, try again after a pause
            self.core.storage_trouble(f"could not store a result: {describe(result)}")
            self.core.deferred.append(functools.partial(self._store_result, w, r, data, ext))
            return
        self._complete(w, [(r, BlobRef(result[0], len(data)), ext)])

    def _complete(self, w: WorkerRecord, results: list[Done]) -> None:
        core = self.core
        core.redoable.append(functools.partial(self._complete, w, results))  # again if the turn fails
        recorded = core.store.complete_many(w.ident.decode(errors="replace"), [
            Finished(r["task_id"], r["attempt"], ref, ext, r.get("model_file")) for r, ref, ext in results])
        for r, _, _ in results:
            if w.running.get(r["task_id"]) == r["attempt"]:
                w.running.pop(r["task_id"])  # memory was rebuilt from the rows after a failed turn
            tenant = core.running_tenant.pop(r["task_id"], None)
            if r["task_id"] not in recorded:
                continue
            w.done += 1
            if core.metrics is not None:
                created, started, finished, model = core.store.task_timing(r["task_id"])
                core.metrics.finished.labels("done").inc()
                core.metrics.wait.labels(model or "-").observe(max(0.0, started - created))
                core.metrics.run.labels(model or "-").observe(max(0.0, finished - started))
            if tenant is None:  # not in memory (rebuilt after a failed turn): ask the rows
                tenant = core.store.job_tenant(r["task_id"]) or "default"
            core.rates.record(int(core.clock()), tenant, r.get("processor") == "rembg")

    def goodbye(self, ident: bytes, msg: p.Goodbye, who: Principal) -> None:
        core = self.core
        w = core.registry.get_alive(ident)
        if w is None or w.user != who.name:
            return
        for pair in msg.returned:
            if len(pair) == 2 and w.running.get(pair[0]) == pair[1]:
                core.hand_back(w, pair[0], pair[1])
        # a leaving worker lists everything it holds; what else is dispatched to it was still on
        # the wire when it left: not its death nor the task's fault, so back to the queue unspent
        for task_id, attempt in list(w.running.items()):
            core.hand_back(w, task_id, attempt)
        core.lose_worker(w, "left", state="left")
