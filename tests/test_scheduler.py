"""The dispatch policy on its own: broker/scheduler.py with an injected clock.

No sockets, no SQL, no sleeping: `now` is a number the test moves.
"""

from __future__ import annotations

from collections import Counter

import pytest

from broker.scheduler import Scheduler, TenantPolicy


def _fill(s: Scheduler, tenant: str, n: int, start: int, priority: int = 0, now: float = 0.0) -> list[int]:
    ids = list(range(start, start + n))
    for tid in ids:
        s.push(tid, tenant, priority, now=now)
    return ids


def _drain(s: Scheduler, batch: int, total: int, now: float = 0.0, running=None) -> list[tuple[int, str]]:
    """Pop `total` tasks in pops of `batch`, the way the broker does as slots free up."""
    out: list[tuple[int, str]] = []
    while len(out) < total:
        got = s.pop(min(batch, total - len(out)), now, running)
        if not got:
            break
        out += got
    return out


# ---------------------------------------------------------------- shares across tenants


@pytest.mark.parametrize("batch", [1, 2, 3, 7, 64])
def test_equal_weights_share_equally_whatever_the_batch(batch):
    s = Scheduler()
    _fill(s, "A", 1000, 0)
    _fill(s, "B", 1000, 10_000)
    got = Counter(t for _, t in _drain(s, batch, 400))
    assert abs(got["A"] - got["B"]) <= 2, got


def test_small_tenant_behind_a_big_backlog_goes_out_in_the_first_round():
    """10 tasks behind another tenant's 10,000: one each per round, so all 10 are
    among the first 2 x 10 picks, not after the backlog."""
    s = Scheduler()
    _fill(s, "big", 10_000, 0)
    small = set(_fill(s, "small", 10, 100_000))
    first = s.pop(64)
    assert small <= {tid for tid, _ in first}
    positions = [i for i, (tid, _) in enumerate(first) if tid in small]
    assert max(positions) < 20, positions


def test_a_late_tenant_does_not_wait_for_the_rest_of_a_round():
    s = Scheduler()
    _fill(s, "big", 5000, 0)
    assert len(s.pop(64)) == 64  # big alone: it takes whole batches
    late = set(_fill(s, "late", 5, 100_000))
    nxt = s.pop(10)
    assert late <= {tid for tid, _ in nxt}


@pytest.mark.parametrize("batch", [1, 2, 4, 5, 64])
@pytest.mark.parametrize("weights", [(3.0, 1.0), (1.0, 3.0), (0.5, 1.0), (5.0, 2.0)])
def test_weights_hold_within_10_percent_over_a_long_run(weights, batch):
    """Whatever size the pops come in (a worker often frees one slot at a time), a
    tenant with weight w gets w/(sum of weights) of the dispatches."""
    wa, wb = weights
    s = Scheduler({"A": TenantPolicy(weight=wa), "B": TenantPolicy(weight=wb)})
    _fill(s, "A", 20_000, 0)
    _fill(s, "B", 20_000, 100_000)
    got = Counter(t for _, t in _drain(s, batch, 8000))
    ratio = got["A"] / got["B"]
    assert ratio == pytest.approx(wa / wb, rel=0.10), (got, batch)


def test_three_tenants_with_weights_1_2_3():
    s = Scheduler({"x": TenantPolicy(weight=1), "y": TenantPolicy(weight=2), "z": TenantPolicy(weight=3)})
    for i, name in enumerate("xyz"):
        _fill(s, name, 5000, i * 10_000)
    for batch in (1, 4, 64):
        got = Counter(t for _, t in _drain(s, batch, 1200))
        for name, w in (("x", 1), ("y", 2), ("z", 3)):
            assert got[name] / 1200 == pytest.approx(w / 6, rel=0.10), (batch, got)


def test_a_heavy_weight_tenant_does_not_starve_a_light_one():
    s = Scheduler({"A": TenantPolicy(weight=100), "B": TenantPolicy(weight=1)})
    _fill(s, "A", 10_000, 0)
    _fill(s, "B", 100, 100_000)
    got = Counter(t for _, t in _drain(s, 1, 1010))
    assert got["B"] == 10  # one in every 101 picks


def test_one_tenant_alone_takes_whole_batches_and_empty_tenants_are_forgotten():
    s = Scheduler()
    ids = _fill(s, "A", 100, 0)
    assert [tid for tid, _ in s.pop(64)] == ids[:64]
    assert [tid for tid, _ in s.pop(64)] == ids[64:]
    assert s.pop(64) == [] and len(s) == 0 and not s.ready()


# ---------------------------------------------------------------- within a tenant


def test_priority_first_then_submission_order_within_a_tenant():
    s = Scheduler()
    s.push(1, "A", 0)
    s.push(2, "A", 5)
    s.push(3, "A", 0)
    s.push(4, "A", 5)
    s.push(5, "A", -1)
    s.push(6, "A", 9)
    assert [tid for tid, _ in s.pop(10)] == [6, 2, 4, 1, 3, 5]


def test_priority_does_not_jump_the_queue_of_another_tenant():
    """A tenant's priority orders its own tasks; it buys no share from others."""
    s = Scheduler()
    _fill(s, "A", 100, 0, priority=100)
    _fill(s, "B", 100, 1000, priority=0)
    got = Counter(t for _, t in s.pop(40))
    assert got == {"A": 20, "B": 20}


# ---------------------------------------------------------------- caps


def test_max_running_counts_what_is_already_running():
    s = Scheduler({"A": TenantPolicy(max_running=3)})
    _fill(s, "A", 50, 0)
    _fill(s, "B", 100, 1000)
    got = Counter(t for _, t in s.pop(20, running={"A": 2}))
    assert got == {"A": 1, "B": 19}
    got = Counter(t for _, t in s.pop(20, running={"A": 3}))
    assert got == {"B": 20}
    assert Counter(t for _, t in s.pop(20, running={"A": 0})) == {"A": 3, "B": 17}


def test_max_running_never_exceeded_while_draining():
    """Simulate slots finishing one at a time: the tenant never has more than K out."""
    cap = 4
    s = Scheduler({"A": TenantPolicy(max_running=cap)})
    _fill(s, "A", 300, 0)
    _fill(s, "B", 300, 1000)
    running: Counter = Counter()
    out: list[tuple[int, str]] = []
    peak = 0
    while len(s):
        for tid, tenant in s.pop(3, 0.0, running):
            running[tenant] += 1
            out.append((tid, tenant))
        peak = max(peak, running["A"])
        assert running["A"] <= cap
        # finish the oldest running task of each tenant
        for tenant in list(running):
            if running[tenant]:
                running[tenant] -= 1
    assert peak == cap
    assert Counter(t for _, t in out) == {"A": 300, "B": 300}


def test_capped_tenant_is_not_owed_a_burst_later():
    s = Scheduler({"A": TenantPolicy(max_running=1)})
    _fill(s, "A", 100, 0)
    _fill(s, "B", 1000, 1000)
    for _ in range(20):  # A capped for a long while: B takes everything
        assert {t for _, t in s.pop(5, running={"A": 1})} == {"B"}
    s.policies["A"] = TenantPolicy()  # cap lifted: A gets its share, not a catch-up burst
    got = Counter(t for _, t in s.pop(20))
    assert got["A"] <= 12, got


def test_token_bucket_limits_the_rate_with_a_burst_of_rate():
    rate = 10.0
    s = Scheduler({"A": TenantPolicy(rate=rate)})
    _fill(s, "A", 10_000, 0)
    assert len(s.pop(100, now=0.0)) == 10  # the burst
    assert len(s.pop(100, now=0.0)) == 0
    assert len(s.pop(100, now=0.05)) == 0
    assert len(s.pop(100, now=0.5)) == 5
    taken = 15
    now = 0.5
    while now < 20.0:  # pops every 10 ms for 19.5 s
        now += 0.01
        taken += len(s.pop(100, now=now))
    assert taken <= rate * 20.0 + rate  # rate x window + burst
    assert taken >= rate * 20.0 - 1


def test_rate_limited_tenant_does_not_regain_its_burst_by_emptying_its_queue():
    """Submitting in small bursts that each drain the queue must not reset the bucket."""
    s = Scheduler({"A": TenantPolicy(rate=5.0)})
    _fill(s, "A", 5, 0, now=0.0)
    assert len(s.pop(100, now=0.0)) == 5  # the burst is spent
    taken = 0
    now = 0.0
    for i in range(100):  # 1 s: five tasks every 10 ms, each pop empties the queue
        now += 0.01
        _fill(s, "A", 5, 1000 + 5 * i, now=now)
        taken += len(s.pop(100, now=now))
    assert taken <= 5 + 1, taken  # one second at 5/s (+1 for rounding), not 500


def test_rate_cap_leaves_the_rest_to_other_tenants():
    s = Scheduler({"A": TenantPolicy(rate=2.0)})
    _fill(s, "A", 100, 0)
    _fill(s, "B", 100, 1000)
    got = Counter(t for _, t in s.pop(30, now=0.0))
    assert got == {"A": 2, "B": 28}


# ---------------------------------------------------------------- pause and delayed release


def test_pause_all_and_pause_one_tenant():
    s = Scheduler()
    _fill(s, "A", 10, 0)
    _fill(s, "B", 10, 100)
    s.paused_all = True
    assert not s.ready() and s.pop(100) == []
    s.paused_all = False
    s.paused.add("A")
    assert s.ready()
    assert {t for _, t in s.pop(100)} == {"B"}
    assert not s.ready() and s.pop(100) == []  # only paused work left
    assert len(s) == 10  # still held, not dropped
    s.paused.discard("A")
    assert [tid for tid, _ in s.pop(100)] == list(range(10))


def test_paused_tenant_keeps_its_order_and_gets_no_catch_up():
    s = Scheduler()
    _fill(s, "A", 100, 0)
    _fill(s, "B", 100, 1000)
    s.paused.add("A")
    assert len(s.pop(50)) == 50  # all B
    s.paused.discard("A")
    got = s.pop(20)
    assert Counter(t for _, t in got) == {"A": 10, "B": 10}
    assert [tid for tid, t in got if t == "A"] == list(range(10))


def test_delayed_task_waits_for_its_time():
    s = Scheduler()
    s.push(1, "A", 0, not_before=105.0, now=100.0)
    s.push(2, "A", 0, not_before=0.0, now=100.0)
    assert len(s) == 2
    assert s.next_wakeup() == 105.0
    assert s.pop(10, now=100.0) == [(2, "A")]
    assert not s.ready()
    assert s.release_due(104.9) == 0 and s.pop(10) == []
    assert s.release_due(105.0) == 1
    assert s.next_wakeup() is None
    assert s.pop(10) == [(1, "A")]
    assert len(s) == 0


def test_delayed_tasks_release_in_time_order_with_their_priority():
    s = Scheduler()
    s.push(1, "A", 0, not_before=30.0, now=0.0)
    s.push(2, "A", 0, not_before=10.0, now=0.0)
    s.push(3, "A", 7, not_before=20.0, now=0.0)
    s.push(4, "A", 0)
    assert s.next_wakeup() == 10.0
    assert s.release_due(25.0) == 2
    got = [tid for tid, _ in s.pop(10)]
    assert got[0] == 3 and sorted(got[1:]) == [2, 4]  # priority 7 first
    assert s.release_due(30.0) == 1 and s.pop(10) == [(1, "A")]
