"""The client library's errors and warnings: what the broker refused (or the client refused before
sending), no broker answering, and what the broker accepted with a warning.  Importable alone (no zmq)."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping
from types import FrameType
from typing import Any

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep  # frames in here are the library's own


class CutqError(Exception):
    """An error the broker reported (or a client-side refusal); `code` is machine-readable."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class BrokerUnavailable(CutqError):
    """No reply from the broker within the timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="unavailable")


class CutqWarning(UserWarning):
    """The broker accepted a request but warned about it, e.g. a job no live worker can run yet
    ("no live worker serves model X": it waits in the queue until one joins)."""


def warn_of(reply: Mapping[str, Any]) -> None:
    """Warn with a CutqWarning when a reply's data carries a `warning`, attributed (like pandas'
    `find_stack_level`) to the first caller outside this package, so it points at the user's call."""
    text = reply.get("warning")
    if not text:
        return
    frame: FrameType | None = sys._getframe()
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(CutqWarning(str(text)), stacklevel=level)
