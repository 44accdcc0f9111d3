"""What clients are shown: stats and workers, scoped to the asking key's tenant.

An admin sees everything; a client key sees only numbers computed from its own
tenant's tasks, and of the workers only totals (no hosts, pids or task ids).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from broker.core import Core, needed_model, serves
from broker.rates import eta
from shared.states import TASK_STATES


def stats(core: Core, tenant: str | None) -> dict[str, Any]:
    """Queue counts, throughput and worker totals; `tenant` None means everything (admin)."""
    by_tenant = core.store.counts_by_tenant()
    if tenant is None:
        counts: dict[str, Any] = core.store.counts()
    else:
        by_tenant = {tenant: by_tenant.get(tenant, dict.fromkeys(TASK_STATES, 0))}
        counts = {"jobs": None, **by_tenant[tenant]}
    now_s = int(core.clock())
    tps, ips = core.rates.recent(now_s, tenant)
    alive = core.registry.alive()
    if tenant is None:
        slots_used = sum(len(w.running) for w in alive)
        busy = sum(1 for w in alive if w.running)
        paused = sorted(core.scheduler.paused)
    else:  # only this tenant's share of the workers, and no other tenant's name
        mine = {t for t, owner in core.running_tenant.items() if owner == tenant}
        slots_used = len(mine)
        busy = sum(1 for w in alive if mine.intersection(w.running))
        paused = [tenant] if tenant in core.scheduler.paused else []
    waiting = unserved_models(core, tenant)
    return {
        **counts, "queue_depth": counts["queued"], "tasks_per_s": tps, "images_per_s": ips,
        # queued tasks whose model no live worker serves: they wait for one (never fail for it)
        "waiting_models": waiting,
        "waiting": "; ".join(f"{n} tasks {waiting_for(m)}" for m, n in sorted(waiting.items())) or None,
        "history": core.rates.history(now_s, tenant), "workers_total": len(alive),
        "workers_busy": busy,
        "slots_total": sum(w.slots for w in alive), "slots_used": slots_used,
        "paused": core.scheduler.paused_all, "paused_tenants": paused,
        "eta_s": eta(counts["queued"], tps),
        "by_tenant": by_tenant,
        # how much the broker holds is the operator's business, not a tenant's
        "storage": core.store.storage() if tenant is None else None,
    }


def workers(core: Core, tenant: str | None) -> list[dict[str, Any]]:
    """Every known worker in detail (admin), or one anonymous line of totals (a client key)."""
    now, wall = core.clock(), core.wall()
    if tenant is None:
        return [{**w.public(now, wall), "servable": sorted(serves(w))} for w in core.registry.workers.values()]
    alive = core.registry.alive()
    if not alive:
        return []
    return [{
        "id": "*", "name": f"{len(alive)} workers", "host": "", "pid": 0, "state": "alive",
        "slots": sum(w.slots for w in alive), "busy": Counter(core.running_tenant.values()).get(tenant, 0),
        "models": sorted({m for w in alive for m in w.models}),
        "servable": sorted({m for w in alive for m in serves(w)}),
        "providers": sorted({p for w in alive for p in w.providers}),
        "processors": sorted({p for w in alive for p in w.processors}),
        "tasks": [], "last_seen_age": 0.0, "done": 0, "failed": 0, "joined": 0.0, "tasks_per_s": 0.0,
        "count": len(alive),
    }]


def serving(core: Core) -> set[str]:
    """Models some live worker that takes tasks can run."""
    return {m for w in core.registry.alive() if not w.draining for m in serves(w)}


def waiting_for(model: str) -> str:
    return f"waiting for a worker with model {model}"


def unserved_models(core: Core, tenant: str | None) -> dict[str, int]:
    """Queued tasks per model that no live worker serves (of `tenant`, or all)."""
    queued = core.scheduler.queued_models(tenant)
    if not queued:
        return {}
    served = serving(core)
    return {m: n for m, n in queued.items() if m not in served}


def job_waiting(core: Core, job: dict[str, Any]) -> str | None:
    """Why a queued job does not run, when it is that no live worker serves its model."""
    model = needed_model(job["processor"], model=job.get("model"))
    if model is None or not job.get("queued") or model in serving(core):
        return None
    return waiting_for(model)


def unserved_warning(core: Core, model: str) -> str | None:
    """What a submit answers when no live worker serves `model` (None when one does)."""
    if model in serving(core):
        return None
    return (f"no live worker serves model {model}: the job waits in the queue until a worker with its "
            f"weights joins ({waiting_for(model)})")
