"""The client library's errors: what the broker refused (or the client refused before sending),
and no broker answering.  Importable alone (no zmq), so a caller can name them cheaply."""

from __future__ import annotations


class CutqError(Exception):
    """An error the broker reported (or a client-side refusal); `code` is machine-readable."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class BrokerUnavailable(CutqError):
    """No reply from the broker within the timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="unavailable")
