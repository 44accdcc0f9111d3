"""The dispatch policy: which queued task goes next.  Pure: no sockets, no SQL, clock passed in.

Across tenants: deficit round robin by weight, so a tenant with 10 tasks behind
another's 10,000 gets its share from the next round on.  Within a tenant: higher
priority first, then submission order (broker/taskqueue.py: a task re-queued after
a worker's death or a hand-back keeps its original place, and a queue position is a
binary search).  Per-tenant caps: running tasks, and a token bucket of tasks per
second.  Tasks delayed by retry backoff wait in a timer heap until `not_before`.
Cancelled and deleted jobs' tasks are removed; anything else no longer queued is
skipped by the store's compare-and-set in `claim`.

A task may need a model (a rembg task: its weights must be on the worker); inside a
tenant there is one queue per model (None: any worker will do).  `pop(models=...)`
takes only tasks of those models, still fairly across the tenants that have some, so
a task no worker can serve is never popped: it waits in its queue, in its place.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from broker.taskqueue import QueuedRunLike as QueuedRun
from broker.taskqueue import TenantQueue


@dataclass(frozen=True)
class TenantPolicy:
    """A tenant's share and limits; 0 means unlimited."""

    weight: float = 1.0
    max_running: int = 0
    rate: float = 0.0  # tasks per second, token bucket with a burst of max(1, rate)
    max_queued: int = 0


Models = AbstractSet[str] | None  # the models a worker can serve; None: no restriction


@dataclass(eq=False)
class _Tenant:
    # one queue per model a task needs (None: none), each priority then age; an emptied one is deleted
    queues: dict[str | None, TenantQueue] = field(default_factory=dict)
    deficit: float = 0.0
    tokens: float = 0.0
    refilled: float | None = None

    def count(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def queue_for(self, model: str | None) -> TenantQueue:
        q = self.queues.get(model)
        if q is None:
            q = self.queues[model] = TenantQueue()
        return q

    def has(self, models: Models) -> bool:
        """Whether a task here may go to a worker serving `models`."""
        if models is None:
            return bool(self.queues)
        return any(m is None or m in models for m in self.queues)

    def pop(self, models: Models) -> int | None:
        """The tenant's next task among those `models` allows: priority, then age, across its queues."""
        queues = self.queues
        if len(queues) == 1:
            (model, q), = queues.items()
            if models is not None and model is not None and model not in models:
                return None
        else:
            best: tuple[int, int] | None = None
            model = None
            for m, cand in queues.items():
                if models is None or m is None or m in models:
                    head = cand.head()
                    if best is None or head < best:
                        best, model = head, m
            if best is None:
                return None
            q = queues[model]
        task_id = q.pop()
        if not len(q):
            del queues[model]
        return task_id


class Scheduler:
    """In-memory mirror of the queued tasks, rebuilt from the store at start-up."""

    def __init__(self, policies: Mapping[str, TenantPolicy] | None = None) -> None:
        self._tenants: OrderedDict[str, _Tenant] = OrderedDict()
        # (not_before, seq, task_id, tenant, priority, model)
        self._delayed: list[tuple[float, int, int, str, int, str | None]] = []
        self._seq = itertools.count()
        self.policies: dict[str, TenantPolicy] = dict(policies or {})
        self.paused_all = False
        self.paused: set[str] = set()
        self._current: str | None = None  # the tenant whose turn a full batch cut short

    def __len__(self) -> int:
        return sum(t.count() for t in self._tenants.values()) + len(self._delayed)

    def policy(self, tenant: str) -> TenantPolicy:
        return self.policies.get(tenant) or TenantPolicy()

    def _tenant(self, name: str) -> _Tenant:
        t = self._tenants.get(name)
        if t is None:
            t = self._tenants[name] = _Tenant()
        return t

    def push(self, task_id: int, tenant: str, priority: int = 0, not_before: float = 0.0, now: float = 0.0,
             model: str | None = None) -> None:
        """Queue a task (that needs `model`, or any worker), or hold it until `not_before` (retry backoff)."""
        if not_before > now:
            heapq.heappush(self._delayed, (not_before, next(self._seq), task_id, tenant, priority, model))
            return
        self._tenant(tenant).queue_for(model).push(task_id, priority)

    def ahead(self, tenant: str, task_id: int, priority: int) -> int:
        """Queued tasks of `tenant` that dispatch before this one (its queue position), whatever their model."""
        t = self._tenants.get(tenant)
        return sum(q.ahead(task_id, priority) for q in t.queues.values()) if t is not None else 0

    def remove(self, tenant: str, priority: int, task_ids: list[int]) -> None:
        """Forget queued tasks that will never run (cancelled, deleted)."""
        t = self._tenants.get(tenant)
        if t is None:
            return
        ids = sorted(task_ids)
        for model, q in list(t.queues.items()):
            q.remove(ids, priority)
            if not len(q):
                del t.queues[model]

    def needs_models(self) -> bool:
        """Whether any ready task needs a model (else every worker can take every task)."""
        return any(m is not None for t in self._tenants.values() for m in t.queues)

    def queued_models(self, tenant: str | None = None) -> Counter[str]:
        """Ready tasks per model they need (of one tenant, or all); tasks that need none are left out."""
        out: Counter[str] = Counter()
        for name, t in self._tenants.items():
            if tenant is None or name == tenant:
                for m, q in t.queues.items():
                    if m is not None:
                        out[m] += len(q)
        return out

    def load(self, runs: Iterable[QueuedRun], now: float) -> int:
        """Fill an empty scheduler job by job, in submission order: an untouched job is one range
        appended at once (the restart path stays near a second at a million queued)."""
        n = 0
        for run in runs:
            if run.count:
                self._tenant(run.tenant).queue_for(run.model).extend(range(run.first, run.first + run.count),
                                                                     run.priority)
                n += run.count
                continue
            for task_id, not_before in run.tasks():
                self.push(task_id, run.tenant, run.priority, not_before, now, run.model)
                n += 1
        return n

    def next_wakeup(self) -> float | None:
        """When the earliest delayed task becomes due, if any."""
        return self._delayed[0][0] if self._delayed else None

    def release_due(self, now: float) -> int:
        """Move delayed tasks whose time has come into their tenant's queue."""
        n = 0
        while self._delayed and self._delayed[0][0] <= now:
            _, _, task_id, tenant, prio, model = heapq.heappop(self._delayed)
            self.push(task_id, tenant, prio, model=model)
            n += 1
        return n

    def ready(self, models: Models = None) -> bool:
        """True if some tenant that is not paused has a task waiting (one `models` allows)."""
        if self.paused_all:
            return False
        return any(t.has(models) and name not in self.paused for name, t in self._tenants.items())

    def _allowance(self, name: str, t: _Tenant, now: float, running: Mapping[str, int]) -> float:
        """How many tasks the tenant's caps let it start now (inf when uncapped)."""
        pol = self.policy(name)
        allow = float("inf")
        if pol.max_running:
            allow = max(0, pol.max_running - running.get(name, 0))
        if pol.rate:
            burst = max(1.0, pol.rate)
            if t.refilled is None:
                t.tokens, t.refilled = burst, now
            t.tokens = min(burst, t.tokens + (now - t.refilled) * pol.rate)
            t.refilled = now
            allow = min(allow, int(t.tokens))
        return allow

    def pop(self, n: int, now: float = 0.0, running: Mapping[str, int] | None = None,
            models: Models = None) -> list[tuple[int, str]]:
        """Up to n (task_id, tenant) pairs, fairly across tenants by weight, within their caps;
        only tasks that need no model or one of `models` (None: any task)."""
        out: list[tuple[int, str]] = []
        if self.paused_all:
            return out
        running = running or {}
        taken: Counter[str] = Counter()
        allowance = {name: self._allowance(name, t, now, running)
                     for name, t in self._tenants.items() if t.has(models) and name not in self.paused}
        # a turn cut short by a full batch resumes without a fresh quantum, so weights hold
        # even when slots free up one at a time
        resume, self._current = self._current, None
        while len(out) < n:
            active = [(name, self._tenants[name]) for name, a in allowance.items()
                      if a > taken[name] and self._tenants[name].has(models)]
            if not active:
                break
            if len(active) == 1:
                name, t = active[0]  # one tenant: no one to be fair to, take a slice
                self._take(name, t, n - len(out), allowance[name] - taken[name], out, taken, models, by_deficit=False)
                break
            if self._round(active, resume, n, out, taken, allowance, models):
                break
            resume = None
        self._settle(taken)
        return out

    def _take(self, name: str, t: _Tenant, want: int, allowed: float, out: list[tuple[int, str]],
              taken: Counter[str], models: Models, by_deficit: bool) -> None:
        """Move up to `want` of a tenant's tasks (within `allowed`, and its deficit if asked) to `out`."""
        k = 0
        while k < want and k < allowed and (not by_deficit or t.deficit >= 1.0):
            task_id = t.pop(models)
            if task_id is None:
                break
            out.append((task_id, name))
            k += 1
            if by_deficit:
                t.deficit -= 1.0
        taken[name] += k

    def _round(self, active: list[tuple[str, _Tenant]], resume: str | None, n: int, out: list[tuple[int, str]],
               taken: Counter[str], allowance: dict[str, float], models: Models) -> bool:
        """One deficit-round-robin pass over `active`; True when the batch filled up in it."""
        for name, t in active:
            if name != resume:
                t.deficit += self.policy(name).weight
            resume = None
            self._take(name, t, n - len(out), allowance[name] - taken[name], out, taken, models, by_deficit=True)
            if not t.queues:
                t.deficit = 0.0
            elif taken[name] >= allowance[name] or not t.has(models):
                # capped, or nothing left this worker can serve: not owed a burst later
                t.deficit = min(t.deficit, self.policy(name).weight)
            if len(out) >= n:
                # the next call goes on with this round: this tenant if its turn is
                # unfinished, else the one after it, so no tenant is always first
                unfinished = t.has(models) and t.deficit >= 1.0 and taken[name] < allowance[name]
                self._start_round_at(name, include=unfinished)
                self._current = name if unfinished else None
                return True
        return False

    def _settle(self, taken: Counter[str]) -> None:
        """Spend rate tokens for what was taken; forget tenants whose queue emptied."""
        for name, k in taken.items():
            if self.policy(name).rate:
                self._tenants[name].tokens -= k
        # a rate-limited tenant keeps its bucket when its queue empties: forgetting it
        # would hand it a fresh burst with every small submission
        for name in [k for k, t in self._tenants.items() if not t.queues and not self.policy(k).rate]:
            del self._tenants[name]

    def _start_round_at(self, name: str, include: bool) -> None:
        """Rotate the round order so the next pop starts at `name` (or just after it)."""
        for k in list(self._tenants):
            if k == name:
                break
            self._tenants.move_to_end(k)
        if not include:
            self._tenants.move_to_end(name)
