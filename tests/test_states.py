"""shared.states: the transition table, job_state(), and that the store's SQL job-state
filters agree with job_state() for any mixture of task states."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.states import (
    ACTIVE,
    JOB_STATES,
    TASK_STATES,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    TaskState,
    allowed_sources,
    check_transition,
    job_state,
)
from tests.store_helpers import EVERYTHING, Clock, force, open_store

# The state machine of docs/ARCHITECTURE.md, written out pair by pair.
ALLOWED = {
    ("queued", "running"),  # claim
    ("queued", "cancelled"),  # cancel
    ("running", "done"),  # result
    ("running", "failed"),  # input error, attempts spent, quarantine
    ("running", "cancelled"),  # cancel
    ("running", "queued"),  # worker died or left, transient failure, broker restarted
    ("failed", "queued"),  # cutq retry
    ("cancelled", "queued"),  # cutq retry
}


def test_the_states() -> None:
    assert TASK_STATES == ("queued", "running", "done", "failed", "cancelled")
    assert JOB_STATES == TASK_STATES
    assert [s.value for s in TaskState] == list(TASK_STATES)
    assert ACTIVE == {"queued", "running"} and TERMINAL == {"done", "failed", "cancelled"}
    assert ACTIVE | TERMINAL == set(TASK_STATES) and not ACTIVE & TERMINAL


def test_members_are_their_strings() -> None:
    """Callers use plain strings; a member works wherever one does."""
    assert TaskState.QUEUED == "queued" and f"{TaskState.DONE}" == "done" and str(TaskState.FAILED) == "failed"
    assert TaskState("running") is TaskState.RUNNING
    assert TaskState.CANCELLED in TERMINAL and "cancelled" in TERMINAL
    assert TRANSITIONS[TaskState.QUEUED] == TRANSITIONS["queued"]
    assert all(type(s) is str for s in (*TASK_STATES, *TERMINAL, *ACTIVE, *TRANSITIONS))
    assert all(type(s) is str for dests in TRANSITIONS.values() for s in dests)
    assert type(job_state({"done": 1})) is str


@pytest.mark.parametrize(("source", "target"), list(itertools.product(TASK_STATES, repeat=2)))
def test_the_transition_table(source: str, target: str) -> None:
    assert ((source, target) in ALLOWED) == (target in TRANSITIONS[source])
    if (source, target) in ALLOWED:
        check_transition(source, target)
        check_transition(TaskState(source), TaskState(target))
        assert source in allowed_sources(target)
    else:
        with pytest.raises(IllegalTransition, match=f"from {source} to {target}"):
            check_transition(source, target)
        assert source not in allowed_sources(target)


def test_the_table_has_every_state_and_nothing_else() -> None:
    assert set(TRANSITIONS) == set(TASK_STATES)
    assert {(s, t) for s, dests in TRANSITIONS.items() for t in dests} == ALLOWED
    assert TRANSITIONS["done"] == frozenset()  # done is final


@pytest.mark.parametrize(("source", "target"),
                         [("bogus", "queued"), ("queued", "bogus"), ("", ""), ("QUEUED", "running")])
def test_unknown_states_are_refused(source: str, target: str) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(source, target)


def test_allowed_sources() -> None:
    assert set(allowed_sources("queued")) == {"running", "failed", "cancelled"}
    assert set(allowed_sources("cancelled")) == {"queued", "running"}
    assert allowed_sources("running") == ("queued",)
    assert allowed_sources("bogus") == ()


@pytest.mark.parametrize(("counts", "state"), [
    ({}, "done"),  # no tasks
    ({"queued": 3}, "queued"),
    ({"queued": 2, "running": 1}, "running"),
    ({"queued": 1, "done": 1}, "running"),  # started: some work is finished
    ({"queued": 1, "cancelled": 1}, "running"),
    ({"running": 1, "failed": 4}, "running"),
    ({"done": 2}, "done"),
    ({"done": 2, "failed": 1}, "failed"),
    ({"failed": 1, "cancelled": 5}, "failed"),
    ({"done": 1, "cancelled": 1}, "cancelled"),
    ({"cancelled": 1}, "cancelled"),
    ({"done": 0, "queued": 0, "cancelled": 2}, "cancelled"),
])
def test_job_state(counts: dict[str, int], state: str) -> None:
    assert job_state(counts) == state
    assert job_state(Counter(counts)) == state
    assert job_state({TaskState(k): v for k, v in counts.items()}) == state


def test_job_state_ignores_other_keys() -> None:
    """A job row carries total, errors... next to the counts: only the states count."""
    assert job_state({"queued": 1, "total": 1, "errors": 7, "jobs": 3}) == "queued"


# ---------------------------------------------------------------- job_state() vs the store's SQL filters

# a job: its tasks' states, each with a way to reach it (see tests.store_helpers.force)
task_plan = st.tuples(st.sampled_from(TASK_STATES), st.integers(min_value=0, max_value=11))
job_plan = st.lists(task_plan, min_size=1, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs=st.lists(job_plan, min_size=1, max_size=8))
def test_the_store_filters_jobs_exactly_as_job_state_derives_them(jobs: list[list[tuple[str, int]]]) -> None:
    q = open_store(":memory:", Clock())
    try:
        expected: dict[str, str] = {}
        for plan in jobs:
            job_id, tids = q.stage(names=[f"{i}.png" for i in range(len(plan))], blobs=[b"x"] * len(plan),
                                           processor="noop", options={}, tenant="t", priority=0)
            q.store.commit()
            tids = [t.task_id for t in tids]
            for tid, (state, via) in zip(tids, plan, strict=True):
                force(q, job_id, tid, state, via=via)  # every write re-checks all the filters too
            expected[job_id] = job_state(Counter(state for state, _ in plan))
        for state in JOB_STATES:
            listed, total = q.list_jobs(state, None, EVERYTHING, 0)
            want = {j for j, s in expected.items() if s == state}
            assert {j["job_id"] for j in listed} == want, state
            assert total == len(want)
        for job_id, state in expected.items():
            assert q.job(job_id)["state"] == state
    finally:
        q.store.close()
