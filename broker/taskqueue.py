"""One tenant's queued tasks in dispatch order, compact and countable.

Per priority, the task ids sit in an `array('q')` (8 bytes a task, not a tuple on a
heap): new submissions append, dispatch pops from the front, a re-queued task is
inserted back at its place (ids grow with submission, so priority then id is
"priority, then age").  Because the ids are sorted, "how many tasks go before this
one" is a binary search: the queue position costs the same at any depth.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable
from typing import Protocol

_COMPACT_AFTER = 4096  # popped slots kept at the front before the array is shifted


class QueuedRunLike(Protocol):
    """One job's queued tasks as the store hands them over at start-up (broker.store.QueuedRun)."""

    @property
    def tenant(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def first(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def model(self) -> str | None: ...

    def tasks(self) -> list[tuple[int, float]]: ...


class SortedIds:
    """Task ids of one priority, ascending; popped from the front."""

    __slots__ = ("ids", "head")

    def __init__(self) -> None:
        self.ids = array("q")
        self.head = 0  # ids[:head] were popped

    def __len__(self) -> int:
        return len(self.ids) - self.head

    def add(self, task_id: int) -> None:
        ids = self.ids
        if len(ids) == self.head or task_id > ids[-1]:
            ids.append(task_id)  # the common case: a new submission
        else:
            ids.insert(bisect_left(ids, task_id, self.head), task_id)  # a re-queue keeps its place

    def extend(self, task_ids: range) -> None:
        """Append ids larger than any held (a whole untouched job at start-up)."""
        if len(self.ids) > self.head and task_ids and task_ids[0] <= self.ids[-1]:
            for task_id in task_ids:
                self.add(task_id)
        else:
            self.ids.extend(task_ids)

    def pop(self) -> int:
        task_id = self.ids[self.head]
        self.head += 1
        if self.head >= _COMPACT_AFTER and self.head * 2 >= len(self.ids):
            del self.ids[: self.head]
            self.head = 0
        return task_id

    def before(self, task_id: int) -> int:
        """How many ids here come before `task_id`."""
        return bisect_left(self.ids, task_id, self.head) - self.head

    def remove(self, task_ids: Iterable[int]) -> int:
        """Drop these ids (a cancelled job's run is one slice); returns how many were here."""
        ids, found = self.ids, []
        for task_id in task_ids:
            i = bisect_left(ids, task_id, self.head)
            if i < len(ids) and ids[i] == task_id:
                found.append(i)
        found.sort()
        end = len(found)
        while end:  # delete runs of neighbouring slots from the back, one slice each
            start = end - 1
            while start and found[start - 1] == found[start] - 1:
                start -= 1
            del ids[found[start]: found[end - 1] + 1]
            end = start
        return len(found)


class TenantQueue:
    """A tenant's queued tasks: highest priority first, then oldest."""

    __slots__ = ("_by_priority", "_n")

    def __init__(self) -> None:
        self._by_priority: dict[int, SortedIds] = {}
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def push(self, task_id: int, priority: int) -> None:
        q = self._by_priority.get(priority)
        if q is None:
            q = self._by_priority[priority] = SortedIds()
        q.add(task_id)
        self._n += 1

    def extend(self, task_ids: range, priority: int) -> None:
        if not task_ids:
            return
        q = self._by_priority.get(priority)
        if q is None:
            q = self._by_priority[priority] = SortedIds()
        q.extend(task_ids)
        self._n += len(task_ids)

    def pop(self) -> int:
        """The next task to dispatch (IndexError when empty)."""
        if not self._n:
            raise IndexError("pop from an empty queue")
        priority = max(self._by_priority)  # emptied priorities are deleted: every one here has ids
        q = self._by_priority[priority]
        self._n -= 1
        task_id = q.pop()
        if not len(q):
            del self._by_priority[priority]
        return task_id

    def head(self) -> tuple[int, int]:
        """(-priority, task_id) of the next task: the smallest goes first across queues."""
        priority = max(self._by_priority)
        q = self._by_priority[priority]
        return -priority, q.ids[q.head]

    def ahead(self, task_id: int, priority: int) -> int:
        """Queued tasks that go before `task_id` (of `priority`)."""
        n = sum(len(q) for p, q in self._by_priority.items() if p > priority)
        q = self._by_priority.get(priority)
        return n + (q.before(task_id) if q is not None else 0)

    def remove(self, task_ids: Iterable[int], priority: int) -> None:
        q = self._by_priority.get(priority)
        if q is not None:
            self._n -= q.remove(sorted(task_ids))
            if not len(q):
                del self._by_priority[priority]
