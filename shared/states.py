"""Task and job states, and the one table of allowed task transitions.

The broker's store enforces TRANSITIONS on every write (compare-and-set on the
current state); nothing else decides which moves are legal.
"""

from __future__ import annotations

from enum import Enum


class TaskState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:  # so f-strings and msgpack-friendly values read "queued"
        return self.value


TASK_STATES: tuple[str, ...] = tuple(s.value for s in TaskState)
TERMINAL: frozenset[str] = frozenset({"done", "failed", "cancelled"})
ACTIVE: frozenset[str] = frozenset({"queued", "running"})

# from-state -> the states a task may move to.  running -> queued is a requeue
# (worker died, broker restarted, transient failure with retries left);
# failed/cancelled -> queued is a manual retry.
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled"}),
    "running": frozenset({"done", "failed", "cancelled", "queued"}),
    "done": frozenset(),
    "failed": frozenset({"queued"}),
    "cancelled": frozenset({"queued"}),
}

JOB_STATES: tuple[str, ...] = ("queued", "running", "done", "failed", "cancelled")


class IllegalTransition(ValueError):
    """A write asked for a move that TRANSITIONS does not allow."""


def allowed_sources(target: str) -> tuple[str, ...]:
    """The states from which a task may move to `target` (used in SQL `WHERE state IN`)."""
    return tuple(src for src, dests in TRANSITIONS.items() if target in dests)


def check_transition(current: str, target: str) -> None:
    """Raise IllegalTransition unless current -> target is in the table."""
    if target not in TRANSITIONS.get(current, frozenset()):
        raise IllegalTransition(f"task cannot move from {current} to {target}")


def job_state(counts: dict[str, int]) -> str:
    """Derive a job's state from its per-state task counts.

    Active work wins (running if anything started, else queued); once every task
    is terminal: done if all done, failed if any failed, else cancelled.
    """
    total = sum(counts.get(s, 0) for s in TASK_STATES)
    queued, running = counts.get("queued", 0), counts.get("running", 0)
    if total == 0:
        return "done"
    if queued + running:
        return "queued" if queued == total else "running"
    if counts.get("done", 0) == total:
        return "done"
    if counts.get("failed", 0):
        return "failed"
    return "cancelled"
