"""Handlers for client requests: submit, read, cancel, retry, fetch, subscribe, admin.

Each handler writes through the store (joining the turn's transaction) and puts its
answer in the outbox; nothing is sent before the turn commits.  A job of another
tenant is "not found".
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

from broker import access, views
from broker.blobio import describe
from broker.core import Core, needed_model, serves
from broker.intake import Handler
from broker.keys import Principal
from broker.rates import eta
from broker.registry import Subscription
from broker.scheduler import TenantPolicy
from broker.store import SORT_KEYS, BlobRef, StoreError
from broker.upload_handlers import UploadHandlers
from broker.webhooks import Webhooks, url_problem
from shared import protocol as p
from shared.names import validate_input_name
from shared.options import PROCESSORS, validate_options
from shared.states import TASK_STATES, TaskState

JOB_ID_LENGTH = 12  # the store's job ids: 12 hex digits; anything shorter may be a prefix
_POLICY_FIELDS: dict[str, type] = {"weight": float, "max_running": int, "rate": float, "max_queued": int}


class ClientHandlers:
    """One method per client request type; `table()` maps message types to them."""

    def __init__(self, core: Core, secure: bool, webhooks: Webhooks) -> None:
        self.core = core
        self.secure = secure
        self.webhooks = webhooks
        self.uploads = UploadHandlers(core)

    def table(self) -> dict[type, Handler]:
        return {
            p.Submit: self.submit, p.Status: self.status, p.ListJobs: self.list_jobs, p.Stats: self.stats,
            p.Workers: self.workers, p.Cancel: self.cancel, p.Retry: self.retry, p.Fetch: self.fetch,
            p.Subscribe: self.subscribe, p.Unsubscribe: self.unsubscribe, p.Pause: self.pause,
            p.Tenants: self.tenants, p.TenantSet: self.tenant_set, p.UploadStart: self.uploads.start,
            p.UploadPart: self.uploads.part, p.Delete: self.delete, p.Purge: self.purge,
            p.DrainWorker: self.drain_worker,
        }

    # ------------------------------------------------------------------ helpers

    def _job_or_error(self, ident: bytes, msg: p.Message, job_id: str, who: Principal) -> dict[str, Any] | None:
        """The job `job_id` names (a full id or a unique prefix) if `who` may see it; else None
        after an error reply.  A prefix is resolved in `msg` too, so the handler goes on with the id."""
        job = self.core.store.job(job_id)
        if job is None and 0 < len(job_id) < JOB_ID_LENGTH:
            matches = self.core.store.jobs_with_prefix(job_id, access.scope(who))
            if len(matches) > 1:
                more = "" if len(matches) < 10 else ", ..."
                self.core.out.error(ident, msg, f"job id {job_id} is ambiguous: {', '.join(matches)}{more}",
                                    "ambiguous")
                return None
            if matches:
                job = self.core.store.job(matches[0])
                msg.job_id = matches[0]  # type: ignore[attr-defined]
        if job is None or not access.can_see(who, job["tenant"]):
            gone = self.core.store.tombstone(job_id) if job is None else None
            if gone is not None and access.can_see(who, gone["tenant"]):
                when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(gone["deleted"]))
                self.core.out.error(ident, msg, f"job {job_id} is gone: {gone['reason']} at {when}", "not_found")
            else:
                self.core.out.error(ident, msg, f"job {job_id} not found", "not_found")
            return None
        return job

    def _tenant_rate(self, tenant: str, who: Principal) -> float:
        """Tasks/s this tenant can expect: its own measured rate; an admin also gets an
        equal share of the whole when the tenant has none yet (a client key never sees
        a number computed from other tenants' work)."""
        now_s = int(self.core.clock())
        own = self.core.rates.rate(now_s, tenant)
        if own or access.scope(who) is not None:
            return own
        active = max(1, len(self.core.store.counts_by_tenant(active_only=True)))
        return self.core.rates.rate(now_s) / active

    def _announced_models(self) -> set[str]:
        return {m for w in self.core.registry.alive() for m in serves(w)}

    # ------------------------------------------------------------------ submit

    def submit(self, ident: bytes, msg: p.Submit, who: Principal) -> None:
        """Validate, write the images off the loop, then insert the rows and acknowledge."""
        core = self.core
        tenant = access.submit_tenant(who, msg.tenant, self.secure)
        if msg.upload_id is not None:
            upload = self.uploads.find(ident, msg, msg.upload_id, who)
            if upload is None:
                return
            names, refs = upload.joined()
            options = self._refuse_submission(ident, msg, names, len(refs), tenant)
            if options is None:
                return
            del core.uploads[msg.upload_id]
            self._insert_job(ident, msg, tenant, options, names, refs)
            core.blobio.pinned.subtract(r.digest for r in refs)
            return
        options = self._refuse_submission(ident, msg, msg.names, len(msg.blobs), tenant)
        if options is None:
            return
        inline = core.inline_refs(msg.blobs)
        if inline is not None:  # small images: into this turn's transaction, no thread, no file
            self._insert_job(ident, msg, tenant, options, msg.names, inline)
            return
        sizes = [len(b) for b in msg.blobs]

        def stored(result: list[str] | OSError) -> None:
            if isinstance(result, OSError):
                return core.out.error(ident, msg, f"storage error, nothing was saved: {describe(result)}", "storage")
            checked = self._refuse_submission(ident, msg, msg.names, len(result), tenant)  # again: time passed
            if checked is None:
                core.blobio.delete([d for d in result if not core.store.is_referenced(d)])
                return
            try:
                self._insert_job(ident, msg, tenant, checked, msg.names,
                                 [BlobRef(d, n) for d, n in zip(result, sizes, strict=True)])
            except StoreError as e:  # the turn is rolled back: say so, the client may try again
                core.out.error(ident, msg, f"storage error, nothing was saved: {e}", "storage")
                raise

        core.blobio.write(msg.blobs, stored)

    def _refuse_submission(self, ident: bytes, msg: p.Submit, names: list[str], n_blobs: int,
                           tenant: str) -> dict[str, Any] | None:
        """The submission's validated options; None (after an error reply) when it is refused."""
        problem = self._submission_problem(names, n_blobs, tenant, msg)
        if isinstance(problem, tuple):
            self.core.out.error(ident, msg, *problem)
            return None
        return problem

    def _submission_problem(self, names: list[str], n_blobs: int, tenant: str,
                            msg: p.Submit) -> tuple[str, str] | dict[str, Any]:
        core = self.core
        n = len(names)
        if n == 0 or n != n_blobs:
            return f"a job needs one image per name (got {n} names, {n_blobs} images)", "bad_request"
        if n > core.config.max_tasks_per_submit:
            return f"too many images in one submission: {n} > {core.config.max_tasks_per_submit}", "bad_request"
        for name in names:
            problem = validate_input_name(name)
            if problem:
                return problem, "bad_request"
        if msg.processor not in PROCESSORS:
            return f"unknown processor {msg.processor!r} (one of: {', '.join(PROCESSORS)})", "bad_request"
        if msg.webhook is not None:
            problem = url_problem(msg.webhook, self.webhooks.allow)
            if problem:
                return problem, "bad_request"
        try:
            options = validate_options(msg.processor, msg.options, self._announced_models())
        except ValueError as e:
            return str(e), "bad_request"
        depth, limit = core.store.depth, core.config.max_queued_tasks
        if depth + n > limit:
            retry_after = eta(depth + n - limit, core.rates.rate(int(core.clock()))) or 5.0
            return f"queue full: {depth} tasks queued, limit {limit}; retry after ~{retry_after:.0f}s", "queue_full"
        cap = core.scheduler.policy(tenant).max_queued
        if cap:
            queued = core.store.tenant_queued(tenant)
            if queued + n > cap:
                return (f"quota: tenant {tenant} has {queued} tasks queued, limit {cap}; "
                        f"this submission of {n} would exceed it", "quota")
        return options

    def _insert_job(self, ident: bytes, msg: p.Submit, tenant: str, options: dict[str, Any], names: list[str],
                    refs: list[BlobRef]) -> None:
        """Insert the job `_refuse_submission` accepted (with the options it validated) and acknowledge."""
        core = self.core
        model_files = self._model_files(options.get("model"))
        job_id, tasks, cached = core.store.add_job(
            names=names, inputs=refs, processor=msg.processor, options=options, tenant=tenant,
            priority=msg.priority, use_cache=not msg.no_cache, model_files=model_files, webhook=msg.webhook,
        )
        model = needed_model(msg.processor, options)
        for t in tasks:
            core.scheduler.push(t.task_id, t.tenant, t.priority, model=model)
        if core.metrics is not None:
            core.metrics.submitted.labels(tenant).inc(len(names))
        extra = {"warning": views.unserved_warning(core, model)} if tasks and model is not None else {}
        core.out.reply(ident, msg, job_id=job_id, tasks=[t.task_id for t in tasks], cached=cached,
                       **{k: v for k, v in extra.items() if v})

    def _model_files(self, model: Any) -> set[str] | None:
        """Weights digests live workers announce for `model` (None: no worker says, accept any)."""
        found = {w.model_files[model] for w in self.core.registry.alive() if model in w.model_files}
        return found or None

    # ------------------------------------------------------------------ reads

    def status(self, ident: bytes, msg: p.Status, who: Principal) -> None:
        job = self._job_or_error(ident, msg, msg.job_id, who)
        if job is None:
            return
        store = self.core.store
        if msg.task_state is not None and msg.task_state not in TASK_STATES:
            return self.core.out.error(ident, msg, f"unknown state {msg.task_state!r}", "bad_request")
        if msg.tasks:
            job["tasks"] = store.job_tasks(msg.job_id, msg.task_state, max(0, msg.task_limit), max(0, msg.task_offset))
            for t in job["tasks"]:
                if t["state"] == TaskState.FAILED or t["worker_deaths"] or t["failures"]:
                    t["history"] = store.task_attempts(t["task_id"])
        job["position"], job["eta_s"], job["waiting"] = None, None, None
        hook = store.webhook(msg.job_id)
        if hook is not None:
            job["webhook"] = {k: hook[k] for k in ("url", "state", "attempts", "last_error", "delivered")}
        elif (url := store.webhook_url(msg.job_id)) is not None:
            job["webhook"] = {"url": url, "state": "waiting for the job to end", "attempts": 0}
        first = store.first_queued(msg.job_id) if job["queued"] else None
        if first is not None:
            ahead = self.core.scheduler.ahead(job["tenant"], first, job["priority"])
            job["position"] = ahead
            job["eta_s"] = eta(ahead + job["queued"], self._tenant_rate(job["tenant"], who))
            job["waiting"] = views.job_waiting(self.core, job)
        self.core.out.reply(ident, msg, **job)

    def list_jobs(self, ident: bytes, msg: p.ListJobs, who: Principal) -> None:
        if msg.state is not None and msg.state not in TASK_STATES:
            return self.core.out.error(
                ident, msg, f"unknown state {msg.state!r} (one of: {', '.join(TASK_STATES)})", "bad_request")
        if msg.sort not in SORT_KEYS:
            return self.core.out.error(
                ident, msg, f"cannot sort by {msg.sort!r} (one of: {', '.join(SORT_KEYS)})", "bad_request")
        jobs, total = self.core.store.list_jobs(msg.state, msg.search, max(1, min(msg.limit, 1000)),
                                                max(0, msg.offset), tenant=access.scope(who), sort=msg.sort,
                                                descending=msg.descending)
        self.core.out.reply(ident, msg, jobs=jobs, total=total)

    def stats(self, ident: bytes, msg: p.Stats, who: Principal) -> None:
        self.core.out.reply(ident, msg, **views.stats(self.core, access.scope(who)))

    def workers(self, ident: bytes, msg: p.Workers, who: Principal) -> None:
        self.core.out.reply(ident, msg, workers=views.workers(self.core, access.scope(who)))

    def fetch(self, ident: bytes, msg: p.Fetch, who: Principal) -> None:
        if msg.what not in ("result", "input"):
            return self.core.out.error(ident, msg, f"can fetch 'result' or 'input', not {msg.what!r}", "bad_request")
        found = self.core.store.blob(msg.task_id, msg.what)
        if found is None or not access.can_see(who, found[0]["tenant"]):
            return self.core.out.error(ident, msg, f"task {msg.task_id} has no {msg.what}", "not_found")
        meta, digest = found
        try:
            data = self.core.blob(digest)
        except (OSError, ValueError) as e:
            return self.core.out.error(ident, msg, f"task {msg.task_id}'s {msg.what} is missing: {e}", "storage")
        self.core.out.reply_blobs(ident, msg, meta, [data])  # type: ignore[list-item]

    def tenants(self, ident: bytes, msg: p.Tenants, who: Principal) -> None:
        core = self.core
        counts = core.store.counts_by_tenant()
        names = sorted(set(counts) | set(core.scheduler.policies))
        scope = access.scope(who)
        now_s = int(core.clock())
        running = list(core.running_tenant.values())
        tenants = [
            {"tenant": t, **asdict(core.scheduler.policy(t)), **counts.get(t, dict.fromkeys(TASK_STATES, 0)),
             "paused": t in core.scheduler.paused, "running_now": running.count(t),
             "tasks_per_s": core.rates.rate(now_s, t) if counts.get(t, {}).get("queued") else 0.0,
             "webhook_secret": self.webhooks.secret(t)}  # to verify the webhooks' signatures
            for t in names if scope is None or t == scope
        ]
        core.out.reply(ident, msg, tenants=tenants)

    # ------------------------------------------------------------------ changes

    def delete(self, ident: bytes, msg: p.Delete, who: Principal) -> None:
        if self._job_or_error(ident, msg, msg.job_id, who) is None:
            return
        self.core.delete_job(msg.job_id, f"deleted by {who.name}")
        self.core.out.reply(ident, msg, job_id=msg.job_id, deleted=True)

    def drain_worker(self, ident: bytes, msg: p.DrainWorker, who: Principal) -> None:
        """Admin: stop giving a worker new tasks (or start again); its running tasks go on."""
        found = [w for w in self.core.registry.alive()
                 if msg.worker in (w.name, w.ident.decode(errors="replace"))]
        if not found:
            return self.core.out.error(ident, msg, f"no live worker named {msg.worker!r}", "not_found")
        for w in found:
            w.held = msg.drain
        self.core.out.reply(ident, msg, worker=found[0].name, draining=msg.drain, running=len(found[0].running))

    def purge(self, ident: bytes, msg: p.Purge, who: Principal) -> None:
        finals = ("done", "failed", "cancelled")
        if msg.state is not None and msg.state not in finals:
            return self.core.out.error(ident, msg, f"can purge jobs that are {', '.join(finals)}, "
                                       f"not {msg.state!r}", "bad_request")
        scope = access.scope(who)
        if scope is not None and msg.tenant not in (None, scope):
            return self.core.out.error(ident, msg, f"tenant {msg.tenant} not found", "not_found")
        tenant = scope if scope is not None else msg.tenant
        limit = max(1, min(msg.limit, 1000))
        before = self.core.wall() - msg.older_than_s if msg.older_than_s is not None else None
        ids = self.core.store.purgeable_jobs(state=msg.state, created_before=before, tenant=tenant, limit=limit)
        for job_id in ids:
            self.core.delete_job(job_id, f"purged by {who.name}")
        self.core.out.reply(ident, msg, deleted=len(ids), job_ids=ids, more=len(ids) == limit)

    def cancel(self, ident: bytes, msg: p.Cancel, who: Principal) -> None:
        job = self._job_or_error(ident, msg, msg.job_id, who)
        if job is None:
            return
        core = self.core
        cancelled = core.store.cancel(msg.job_id, msg.task_ids)
        core.scheduler.remove(job["tenant"], job["priority"],
                              [tid for tid, _a, _w, old in cancelled if old == TaskState.QUEUED])
        for task_id, _attempt, worker, old in cancelled:
            if old != TaskState.RUNNING or worker is None:
                continue
            w = core.registry.get_alive(worker.encode())
            if w is not None and task_id in w.running:
                core.release(w, task_id)
                core.out.cancels[w.ident].append(task_id)
        core.out.reply(ident, msg, cancelled=len(cancelled), job_id=msg.job_id)

    def retry(self, ident: bytes, msg: p.Retry, who: Principal) -> None:
        job = self._job_or_error(ident, msg, msg.job_id, who)
        if job is None:
            return
        requeued = self.core.store.retry(msg.job_id, msg.task_ids)
        model = needed_model(job["processor"], model=job["model"])
        for t in requeued:
            self.core.scheduler.push(t.task_id, t.tenant, t.priority, model=model)
        self.core.out.reply(ident, msg, requeued=len(requeued), job_id=msg.job_id)

    def subscribe(self, ident: bytes, msg: p.Subscribe, who: Principal) -> None:
        if msg.job_id is not None and self._job_or_error(ident, msg, msg.job_id, who) is None:
            return
        ttl = max(1.0, min(msg.ttl, 300.0))
        self.core.registry.subscribers[ident] = Subscription(
            msg.job_id, self.core.clock() + ttl, access.scope(who), user=who.name)
        self.core.out.reply(ident, msg, ttl=ttl)

    def unsubscribe(self, ident: bytes, msg: p.Unsubscribe, who: Principal) -> None:
        self.core.registry.subscribers.pop(ident, None)
        self.core.out.reply(ident, msg)

    def pause(self, ident: bytes, msg: p.Pause, who: Principal) -> None:
        sched = self.core.scheduler
        key = "paused:*" if msg.tenant is None else f"paused:{msg.tenant}"
        self.core.store.set_meta(key, "1" if msg.paused else "0")
        if msg.tenant is None:
            sched.paused_all = msg.paused
        elif msg.paused:
            sched.paused.add(msg.tenant)
        else:
            sched.paused.discard(msg.tenant)
        self.core.out.reply(ident, msg, paused=msg.paused, tenant=msg.tenant)

    def tenant_set(self, ident: bytes, msg: p.TenantSet, who: Principal) -> None:
        current = asdict(self.core.scheduler.policy(msg.tenant))
        for key, value in msg.policy.items():
            if key not in _POLICY_FIELDS:
                return self.core.out.error(
                    ident, msg, f"unknown policy field {key!r} (one of: {', '.join(_POLICY_FIELDS)})", "bad_request")
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or value < 0 or (key == "weight" and value <= 0):
                return self.core.out.error(ident, msg, f"{key} must be a positive number, got {value!r}", "bad_request")
            current[key] = _POLICY_FIELDS[key](value)
        policy = TenantPolicy(**current)
        self.core.store.set_meta(f"tenant:{msg.tenant}", json.dumps(asdict(policy)))
        self.core.scheduler.policies[msg.tenant] = policy
        self.core.out.reply(ident, msg, tenant=msg.tenant, **asdict(policy))
