"""A task's result image, and all of a job's results as one streamed zip."""

from __future__ import annotations

import time
import zipfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from gateway.auth import State, Who
from gateway.broker import BrokerPool
from gateway.errors import ApiError
from gateway.routes.jobs import ERRORS
from shared.names import safe_result_name
from shared.results import named_results

router = APIRouter(prefix="/v1", tags=["results"])

CONTENT_TYPES = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg", "jpeg": "image/jpeg",
                 "gif": "image/gif", "bmp": "image/bmp", "tif": "image/tiff", "avif": "image/avif"}


def disposition(kind: str, name: str, fallback: str) -> str:
    """A Content-Disposition header for an untrusted (already made safe) name, RFC 6266 style."""
    if name.isascii() and name.isprintable() and not any(c in name for c in '"\\;'):
        return f'{kind}; filename="{name}"'
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


@router.get("/jobs/{job_id}/tasks/{task_id}/result", name="task_result", responses={
    **ERRORS, 200: {"content": {t: {} for t in sorted(set(CONTENT_TYPES.values()))}, "description": "the image"}},
    response_class=Response, summary="One task's result image")
def task_result(state: State, who: Who, job_id: str, task_id: int) -> Response:
    """The cut-out with its content type (image/png, image/webp); 404 until the task is done."""
    with state.pool.borrow(who.as_tenant) as client:
        meta, data = client.fetch_result(task_id)
        if meta.get("job_id", None) is None:  # an older broker: ask the job instead
            if not any(t["task_id"] == task_id for t in client.status(job_id)["tasks"]):
                raise ApiError(404, f"job {job_id} has no task {task_id}", "not_found")
        elif meta["job_id"] != job_id:
            raise ApiError(404, f"job {job_id} has no task {task_id}", "not_found")
    ext = str(meta.get("ext") or "bin")
    name = safe_result_name(str(meta.get("name") or ""), ext, task_id, ())
    return Response(data, media_type=CONTENT_TYPES.get(ext, "application/octet-stream"), headers={
        "Content-Disposition": disposition("inline", name, f"task-{task_id}.{ext}" if ext.isalnum() else "result")})


class _Sink:
    """What zipfile writes into: chunks handed out as they come (no tell, so zipfile streams)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def zip_stream(pool: BrokerPool, as_tenant: str | None, tasks: list[dict[str, Any]]) -> Iterator[bytes]:
    """The zip's bytes, one result fetched and written at a time (memory: one image).

    Names come from `named_results`, as `cutq fetch` names its files, distinct within the zip; a
    result that cannot be fetched any more is listed in `errors.txt` at the end instead.  No broker
    mid-way ends the stream early (the client sees a truncated zip, not a valid one that lacks files)."""
    sink = _Sink()
    problems: list[str] = []
    stamp = time.localtime()[:6]

    def fetch(task_id: int) -> tuple[dict[str, Any], bytes]:
        with pool.borrow(as_tenant) as client:
            return client.fetch_result(task_id)

    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as zf:  # type: ignore[call-overload]
        for _, name, data in named_results(tasks, fetch, problems, lambda task: f"task {task['task_id']}"):
            zf.writestr(zipfile.ZipInfo(name, date_time=stamp), data)
            del data
            yield sink.take()
        if problems:
            zf.writestr(zipfile.ZipInfo("errors.txt", date_time=stamp), "\n".join(problems) + "\n")
    yield sink.take()


@router.get("/jobs/{job_id}/results.zip", name="job_results_zip", response_class=StreamingResponse,
            responses={**ERRORS, 409: {"model": ERRORS[400]["model"]},
                       200: {"content": {"application/zip": {}}, "description": "a zip of the done results"}},
            summary="Every done result of a job, as a streamed zip")
def results_zip(state: State, who: Who, job_id: str) -> StreamingResponse:
    """The results of the job's done tasks, named `<input stem>.<ext>`; 409 while none is done."""
    with state.pool.borrow(who.as_tenant) as client:
        status = client.status(job_id)
    done = [t for t in status["tasks"] if t["state"] == "done"]
    if not done:
        raise ApiError(409, f"job {job_id} has no done result yet (state {status['state']})", "no_results")
    return StreamingResponse(zip_stream(state.pool, who.as_tenant, done), media_type="application/zip", headers={
        "Content-Disposition": disposition("attachment", f"{job_id}.zip", "results.zip"),
        "X-Cutq-Results": str(len(done))})
