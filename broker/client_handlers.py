"""Handlers for client requests: submit, read, cancel, retry, fetch, subscribe, admin.

Each handler writes through the store (joining the turn's transaction) and puts its
answer in the outbox; nothing is sent before the turn commits.  A job of another
tenant is "not found".
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Callable

from broker import access, views
from broker.core import Core
from broker.keys import Principal
from broker.rates import eta
from broker.registry import Subscription
from broker.scheduler import TenantPolicy
from shared import protocol as p
from shared.options import PROCESSORS, validate_options
from shared.states import TASK_STATES, TaskState

Handler = Callable[[bytes, Any, Principal], None]
_POLICY_FIELDS: dict[str, type] = {"weight": float, "max_running": int, "rate": float, "max_queued": int}


class ClientHandlers:
    """One method per client request type; `table()` maps message types to them."""

    def __init__(self, core: Core, secure: bool) -> None:
        self.core = core
        self.secure = secure

    def table(self) -> dict[type, Handler]:
        return {
            p.Submit: self.submit, p.Status: self.status, p.ListJobs: self.list_jobs, p.Stats: self.stats,
            p.Workers: self.workers, p.Cancel: self.cancel, p.Retry: self.retry, p.Fetch: self.fetch,
            p.Subscribe: self.subscribe, p.Unsubscribe: self.unsubscribe, p.Pause: self.pause,
            p.Tenants: self.tenants, p.TenantSet: self.tenant_set,
        }

    # ------------------------------------------------------------------ helpers

    def _job_or_error(self, ident: bytes, msg: p.Message, job_id: str, who: Principal) -> dict[str, Any] | None:
        job = self.core.store.job(job_id)
        if job is None or not access.can_see(who, job["tenant"]):
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
        return {m for w in self.core.registry.alive() for m in w.models}

    # ------------------------------------------------------------------ submit

    def submit(self, ident: bytes, msg: p.Submit, who: Principal) -> None:
        core, out = self.core, self.core.out
        n = len(msg.names)
        if n == 0 or n != len(msg.blobs):
            return out.error(ident, msg, f"a job needs one image per name (got {n} names, {len(msg.blobs)} images)", "bad_request")
        if n > core.config.max_tasks_per_submit:
            return out.error(ident, msg, f"too many images in one submission: {n} > {core.config.max_tasks_per_submit}", "bad_request")
        for name in msg.names:
            problem = input_name_problem(name)
            if problem:
                return out.error(ident, msg, problem, "bad_request")
        if msg.processor not in PROCESSORS:
            return out.error(ident, msg, f"unknown processor {msg.processor!r} (one of: {', '.join(PROCESSORS)})", "bad_request")
        try:
            options = validate_options(msg.processor, msg.options, self._announced_models())
        except ValueError as e:
            return out.error(ident, msg, str(e), "bad_request")
        depth = core.store.depth
        if depth + n > core.config.max_queued_tasks:
            retry_after = eta(depth + n - core.config.max_queued_tasks, core.rates.rate(int(core.clock()))) or 5.0
            return out.error(
                ident, msg,
                f"queue full: {depth} tasks queued, limit {core.config.max_queued_tasks}; retry after ~{retry_after:.0f}s",
                "queue_full",
            )
        tenant = access.submit_tenant(who, msg.tenant, self.secure)
        cap = core.scheduler.policy(tenant).max_queued
        if cap:
            queued = core.store.tenant_queued(tenant)
            if queued + n > cap:
                return out.error(
                    ident, msg, f"quota: tenant {tenant} has {queued} tasks queued, limit {cap}; "
                    f"this submission of {n} would exceed it", "quota")
        job_id, tasks = core.store.add_job(
            names=msg.names, blobs=msg.blobs, processor=msg.processor, options=options,
            tenant=tenant, priority=msg.priority,
        )
        for t in tasks:
            core.scheduler.push(t.task_id, t.tenant, t.priority)
        out.reply(ident, msg, job_id=job_id, tasks=[t.task_id for t in tasks])

    # ------------------------------------------------------------------ reads

    def status(self, ident: bytes, msg: p.Status, who: Principal) -> None:
        job = self._job_or_error(ident, msg, msg.job_id, who)
        if job is None:
            return
        store = self.core.store
        if msg.tasks:
            job["tasks"] = store.job_tasks(msg.job_id)
            for t in job["tasks"]:
                if t["state"] == TaskState.FAILED or t["worker_deaths"] or t["failures"]:
                    t["history"] = store.task_attempts(t["task_id"])
        job["position"], job["eta_s"] = None, None
        if job["queued"]:
            ahead = store.queue_position(msg.job_id)
            job["position"] = ahead
            job["eta_s"] = eta(ahead + job["queued"], self._tenant_rate(job["tenant"], who))
        self.core.out.reply(ident, msg, **job)

    def list_jobs(self, ident: bytes, msg: p.ListJobs, who: Principal) -> None:
        if msg.state is not None and msg.state not in TASK_STATES:
            return self.core.out.error(ident, msg, f"unknown state {msg.state!r} (one of: {', '.join(TASK_STATES)})", "bad_request")
        jobs, total = self.core.store.list_jobs(msg.state, msg.search, max(1, min(msg.limit, 1000)),
                                                max(0, msg.offset), tenant=access.scope(who))
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
        meta, data = found
        self.core.out.reply_blobs(ident, msg, meta, [data])

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
             "tasks_per_s": core.rates.rate(now_s, t) if counts.get(t, {}).get("queued") else 0.0}
            for t in names if scope is None or t == scope
        ]
        core.out.reply(ident, msg, tenants=tenants)

    # ------------------------------------------------------------------ changes

    def cancel(self, ident: bytes, msg: p.Cancel, who: Principal) -> None:
        if self._job_or_error(ident, msg, msg.job_id, who) is None:
            return
        core = self.core
        cancelled = core.store.cancel(msg.job_id, msg.task_ids)
        for task_id, _attempt, worker, old in cancelled:
            if old != TaskState.RUNNING or worker is None:
                continue
            w = core.registry.get_alive(worker.encode())
            if w is not None and task_id in w.running:
                core.release(w, task_id)
                core.out.cancels[w.ident].append(task_id)
        core.out.reply(ident, msg, cancelled=len(cancelled))

    def retry(self, ident: bytes, msg: p.Retry, who: Principal) -> None:
        if self._job_or_error(ident, msg, msg.job_id, who) is None:
            return
        requeued = self.core.store.retry(msg.job_id, msg.task_ids)
        for t in requeued:
            self.core.scheduler.push(t.task_id, t.tenant, t.priority)
        self.core.out.reply(ident, msg, requeued=len(requeued))

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
                return self.core.out.error(ident, msg, f"unknown policy field {key!r} (one of: {', '.join(_POLICY_FIELDS)})", "bad_request")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (key == "weight" and value <= 0):
                return self.core.out.error(ident, msg, f"{key} must be a positive number, got {value!r}", "bad_request")
            current[key] = _POLICY_FIELDS[key](value)
        policy = TenantPolicy(**current)
        self.core.store.set_meta(f"tenant:{msg.tenant}", json.dumps(asdict(policy)))
        self.core.scheduler.policies[msg.tenant] = policy
        self.core.out.reply(ident, msg, tenant=msg.tenant, **asdict(policy))


MAX_INPUT_NAME_BYTES = 1024


def input_name_problem(name: str) -> str:
    """Why a submitted file name is refused ("" when it is fine)."""
    if len(name.encode("utf-8", "surrogatepass")) > MAX_INPUT_NAME_BYTES:
        return f"file name too long: {len(name)} characters (limit {MAX_INPUT_NAME_BYTES} bytes)"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"file name {name[:60]!r} contains a NUL or control character"
    return ""
