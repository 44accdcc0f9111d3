"""Task and job states, and the one table of allowed task transitions.

`TaskState` names every state once; everything below is derived from it. The public
tables hold plain strings (`"queued"`, ...), which is what the database, the wire and
every caller use; a `TaskState` member compares and hashes equal to its string, so
either spelling works as a key or in a membership test.

The broker's store enforces TRANSITIONS on every write (compare-and-set on the
current state); nothing else decides which moves are legal.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum


class TaskState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:  # so f-strings and msgpack-friendly values read "queued"
        return self.value


_Q, _R, _D, _F, _C = TaskState.QUEUED, TaskState.RUNNING, TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED

TASK_STATES: tuple[str, ...] = tuple(s.value for s in TaskState)
TERMINAL: frozenset[str] = frozenset({_D.value, _F.value, _C.value})
ACTIVE: frozenset[str] = frozenset({_Q.value, _R.value})

# from-state -> the states a task may move to.  running -> queued is a requeue
# (worker died, broker restarted, transient failure with retries left);
# failed/cancelled -> queued is a manual retry.
_MOVES: dict[TaskState, tuple[TaskState, ...]] = {
    _Q: (_R, _C),
    _R: (_D, _F, _C, _Q),
    _D: (),
    _F: (_Q,),
    _C: (_Q,),
}
TRANSITIONS: dict[str, frozenset[str]] = {
    src.value: frozenset(dst.value for dst in dests) for src, dests in _MOVES.items()
}

# A job's state is one of the task states, derived from its tasks (job_state below).
JOB_STATES: tuple[str, ...] = TASK_STATES


class IllegalTransition(ValueError):
    """A write asked for a move that TRANSITIONS does not allow."""


def allowed_sources(target: str) -> tuple[str, ...]:
    """The states from which a task may move to `target` (used in SQL `WHERE state IN`)."""
    return tuple(src for src, dests in TRANSITIONS.items() if target in dests)


def check_transition(current: str, target: str) -> None:
    """Raise IllegalTransition unless current -> target is in the table."""
    if target not in TRANSITIONS.get(current, frozenset()):
        raise IllegalTransition(f"task cannot move from {current} to {target}")


def job_state(counts: Mapping[str, int]) -> str:
    """Derive a job's state from its per-state task counts.

    Active work wins (running if anything started, else queued); once every task
    is terminal: done if all done, failed if any failed, else cancelled.
    A job without tasks counts as done.
    """
    total = sum(counts.get(s, 0) for s in TASK_STATES)
    queued, running = counts.get(_Q.value, 0), counts.get(_R.value, 0)
    if total == 0:
        return _D.value
    if queued + running:
        return _Q.value if queued == total else _R.value
    if counts.get(_D.value, 0) == total:
        return _D.value
    if counts.get(_F.value, 0):
        return _F.value
    return _C.value
