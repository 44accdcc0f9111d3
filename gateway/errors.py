"""What the broker's error codes become over HTTP, and the one JSON shape every error has.

Every error body is {"error": "<one line for a person>", "code": "<for a program>"}, the
code being the broker's (bad_request, not_found, queue_full, quota, too_large, ...) or the
gateway's own (unauthorized, unavailable, too_many_streams...).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.client import BrokerUnavailable, CutqError

log = logging.getLogger("cutq.http")

DEFAULT_RETRY_AFTER_S = 5
_RETRY_AFTER = re.compile(r"retry after ~?\s*(\d+(?:\.\d+)?)\s*s", re.IGNORECASE)

STATUS_OF_CODE = {
    "bad_request": 400,
    "unknown_option": 400,
    "not_found": 404,
    "too_large": 413,
    "queue_full": 429,
    "quota": 429,
    "forbidden": 403,  # e.g. an admin token while the gateway holds a gateway key
    "storage": 503,  # the broker's disk is full or read-only: nothing was saved, try again
    "unauthorized": 502,  # the broker refused the gateway's own key: the gateway is misconfigured
    "unavailable": 503,
}
RETRY_CODES = frozenset({"queue_full", "quota", "storage", "unavailable"})


class ApiError(Exception):
    """An error the gateway answers itself, in the common shape."""

    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def retry_after_s(message: str) -> int:
    """Seconds from the broker's "... retry after ~Ns", else DEFAULT_RETRY_AFTER_S (at least 1)."""
    m = _RETRY_AFTER.search(message)
    if not m:
        return DEFAULT_RETRY_AFTER_S
    return max(1, math.ceil(float(m.group(1))))


def from_cutq(e: CutqError) -> ApiError:
    """The HTTP answer to a broker error (or to no broker at all)."""
    if isinstance(e, BrokerUnavailable):
        return ApiError(503, f"broker unavailable: {e}", "unavailable",
                        {"Retry-After": str(DEFAULT_RETRY_AFTER_S)})
    status = STATUS_OF_CODE.get(e.code, 502)
    headers = {"Retry-After": str(retry_after_s(str(e)))} if e.code in RETRY_CODES else {}
    return ApiError(status, str(e), e.code, headers)


def body(message: str, code: str) -> dict[str, Any]:
    return {"error": message, "code": code}


def install(app: FastAPI) -> None:
    """Answer every error in the common shape: ours, the broker's, FastAPI's."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(body(e.message, e.code), status_code=e.status, headers=e.headers)

    @app.exception_handler(CutqError)
    async def cutq_error(request: Request, e: CutqError) -> JSONResponse:
        err = from_cutq(e)
        if err.status >= 500:
            log.warning("%s %s: %s (%s)", request.method, request.url.path, err.message, err.code)
        return JSONResponse(body(err.message, err.code), status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(body(_validation_message(e), "bad_request"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                413: "too_large"}.get(e.status_code, "error")
        return JSONResponse(body(str(e.detail), code), status_code=e.status_code, headers=e.headers)


def _validation_message(e: RequestValidationError) -> str:
    """FastAPI's list of problems as one line: `query limit: ...; form files: Field required`."""
    parts = []
    for err in e.errors()[:5]:
        where = " ".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
