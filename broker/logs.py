"""Throttled warnings: a flood of bad handshakes or refused messages must not flood the log.

Each kind of warning is logged for its first `first` occurrences, then only every
`every`-th, with the running count, so an operator still sees that it goes on.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any


class Throttle:
    """Per-kind counters in front of a logger."""

    def __init__(self, logger: logging.Logger, first: int = 20, every: int = 1000) -> None:
        self._log = logger
        self._first, self._every = first, every
        self.counts: Counter[str] = Counter()

    def warn(self, kind: str, fmt: str, *args: Any, level: int = logging.WARNING) -> bool:
        """Count one `kind` event; log it if it is among the first N or every Kth. True if logged."""
        self.counts[kind] += 1
        n = self.counts[kind]
        if n <= self._first or n % self._every == 0:
            suffix = f" [{kind} #{n}; later ones logged every {self._every}th]" if n >= self._first else ""
            self._log.log(level, fmt + "%s", *args, suffix)
            return True
        return False
