"""/v1/jobs: submit (multipart), status, list, cancel, retry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from gateway.auth import State, Who
from gateway.errors import ApiError
from gateway.tokens import Principal
from shared.config import DEFAULT_MODEL
from shared.states import TASK_STATES

router = APIRouter(prefix="/v1", tags=["jobs"])

Processor = Literal["rembg", "noop", "sleep"]
Format = Literal["png", "webp"]
StateName = Literal[TASK_STATES]  # type: ignore[valid-type]  # the states' one list, as a Literal


class JobAccepted(BaseModel):
    job_id: str
    status_url: str
    events_url: str
    results_url: str
    tasks: int
    warning: str | None = Field(None, description="present only when the broker took the job with a warning, e.g. "
                                                  "no live worker serves its model yet, so it waits in the queue")


class ErrorBody(BaseModel):
    error: str
    code: str


ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorBody} for s in (400, 401, 403, 404, 413, 429, 502, 503)
}


def job_options(
    processor: str, *, model: str | None, format: str, bgcolor: str | None, alpha_matting: bool | None,
    fg_threshold: int | None, bg_threshold: int | None, erode_size: int | None, only_mask: bool | None,
    post_process_mask: bool | None, seconds: float | None,
) -> dict[str, Any]:
    """The job's options from the form fields, as `cutq submit` builds them from its flags.

    A field meant for another processor is refused (400) rather than silently dropped.
    The broker validates values and models (a bad one is its bad_request, 400)."""
    rembg_only = {"alpha_matting": alpha_matting, "fg_threshold": fg_threshold, "bg_threshold": bg_threshold,
                  "erode_size": erode_size, "only_mask": only_mask, "post_process_mask": post_process_mask,
                  "bgcolor": bgcolor}
    given = [k for k, v in rembg_only.items() if v is not None]
    if processor != "rembg" and given:
        raise ApiError(400, f"field {given[0]!r} applies to processor rembg only, not {processor!r}", "bad_request")
    if processor != "sleep" and seconds is not None:
        raise ApiError(400, f"field 'seconds' applies to processor sleep only, not {processor!r}", "bad_request")
    opts: dict[str, Any] = {}
    if processor == "rembg":
        opts["model"] = model or DEFAULT_MODEL
        if alpha_matting:
            opts["alpha_matting"] = True
            opts["alpha_matting_foreground_threshold"] = 240 if fg_threshold is None else fg_threshold
            opts["alpha_matting_background_threshold"] = 10 if bg_threshold is None else bg_threshold
            opts["alpha_matting_erode_size"] = 10 if erode_size is None else erode_size
        elif any(v is not None for v in (fg_threshold, bg_threshold, erode_size)):
            raise ApiError(400, "the alpha matting fields need alpha_matting=true", "bad_request")
        if only_mask:
            opts["only_mask"] = True
        if post_process_mask:
            opts["post_process_mask"] = True
        if bgcolor:
            opts["bgcolor"] = bgcolor
    if processor == "sleep":
        opts["seconds"] = 1.0 if seconds is None else seconds
    opts["format"] = format
    return opts


def _read(files: list[UploadFile]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each upload, read only when the client library asks for it.

    The uploads are spooled to disk by the form parser, so a big job is streamed to the
    broker in parts without the gateway holding all of it in memory."""
    for i, f in enumerate(files):
        f.file.seek(0)
        yield (f.filename or f"upload-{i + 1}"), f.file.read()


def _tenant_for(who: Principal, tenant: str | None) -> str:
    if tenant is None or tenant == who.tenant:
        return who.tenant
    if who.role == "admin":
        return tenant
    raise ApiError(403, f"this token acts for tenant {who.tenant!r} only", "forbidden")


def job_url(request: Request, job_id: str, tail: str = "") -> str:
    """An absolute URL under this job (built by hand: `url_for` costs ~0.1 ms, once per task adds up)."""
    return f"{str(request.base_url).rstrip('/')}/v1/jobs/{quote(job_id, safe='')}{tail}"


def job_links(request: Request, job_id: str) -> dict[str, str]:
    return {"status_url": job_url(request, job_id), "events_url": job_url(request, job_id, "/events"),
            "results_url": job_url(request, job_id, "/results.zip")}


@router.post("/jobs", status_code=202, response_model=JobAccepted, responses=ERRORS, summary="Submit images as one job")
def submit_job(
    request: Request,
    state: State,
    who: Who,
    files: Annotated[list[UploadFile], File(description="one or many images (repeat the field)")],
    processor: Annotated[Processor, Form()] = "rembg",
    model: Annotated[str | None, Form(description=f"rembg model (default {DEFAULT_MODEL})")] = None,
    format: Annotated[Format, Form()] = "png",
    bgcolor: Annotated[str | None, Form(description="#rrggbb or #rrggbbaa")] = None,
    alpha_matting: Annotated[bool | None, Form()] = None,
    fg_threshold: Annotated[int | None, Form()] = None,
    bg_threshold: Annotated[int | None, Form()] = None,
    erode_size: Annotated[int | None, Form()] = None,
    only_mask: Annotated[bool | None, Form()] = None,
    post_process_mask: Annotated[bool | None, Form()] = None,
    seconds: Annotated[float | None, Form(description="(sleep) seconds per task")] = None,
    priority: Annotated[int, Form()] = 0,
    no_cache: Annotated[bool, Form(description="run every task even if an equal one has a result")] = False,
    webhook: Annotated[str | None, Form(description="POSTed a signed JSON summary when the job ends")] = None,
    tenant: Annotated[str | None, Form(description="admin tokens only: the tenant to submit for")] = None,
) -> JSONResponse:
    """Upload images (multipart field `files`, repeated) with the job's options as form fields named like
    `cutq submit`'s flags. 202 once the job is durable in the broker's queue; the body has a `warning` when the
    broker took the job with one (e.g. no live worker serves its model yet: the job waits until one joins)."""
    options = job_options(processor, model=model, format=format, bgcolor=bgcolor, alpha_matting=alpha_matting,
                          fg_threshold=fg_threshold, bg_threshold=bg_threshold, erode_size=erode_size,
                          only_mask=only_mask, post_process_mask=post_process_mask, seconds=seconds)
    if not files:
        raise ApiError(400, "a job needs at least one image in the field 'files'", "bad_request")
    with state.pool.borrow(who.as_tenant) as client:
        # the acknowledgement waits the gateway's --timeout, not the library's 60 s floor for big jobs: a
        # streamed job's parts each wait that long already, and its final Submit only names the upload
        # the reply, not `submit`: its CutqWarning would go to this process's stderr, not to the caller
        ack = client.submit_reply(_read(files), processor=processor, options=options, priority=priority,
                                  tenant=_tenant_for(who, tenant), no_cache=no_cache, timeout=state.settings.timeout,
                                  webhook=webhook or None)
    job_id = str(ack["job_id"])
    links = job_links(request, job_id)
    body: dict[str, Any] = {"job_id": job_id, **links, "tasks": len(files)}
    if ack.get("warning"):
        body["warning"] = str(ack["warning"])
    return JSONResponse(body, status_code=202, headers={"Location": links["status_url"]})


@router.get("/jobs/{job_id}", name="job_status", responses=ERRORS, summary="A job's state and tasks")
def job_status(request: Request, state: State, who: Who, job_id: str) -> JSONResponse:
    """What `cutq status --json` prints, each done task with its `result_url`."""
    with state.pool.borrow(who.as_tenant) as client:
        status = client.status(job_id)
    for task in status.get("tasks") or []:
        if task.get("state") == "done":
            task["result_url"] = job_url(request, job_id, f"/tasks/{int(task['task_id'])}/result")
    status.update(job_links(request, job_id))
    return JSONResponse(status)


@router.get("/jobs", responses=ERRORS, summary="Jobs, newest first")
def list_jobs(
    state: State,
    who: Who,
    job_state: Annotated[StateName | None, Query(alias="state")] = None,
    search: Annotated[str | None, Query(max_length=1024, description="job id prefix or file name")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JSONResponse:
    """A page of the caller's jobs: {"jobs": [...], "total", "limit", "offset"}."""
    with state.pool.borrow(who.as_tenant) as client:
        page = client.list_jobs(job_state, search=search, limit=limit, offset=offset)
    return JSONResponse({**page, "limit": limit, "offset": offset})


@router.delete("/jobs/{job_id}", responses=ERRORS, summary="Cancel a job")
def cancel_job(state: State, who: Who, job_id: str) -> dict[str, Any]:
    """Cancel the job's queued and running tasks: {"job_id", "cancelled": N}."""
    with state.pool.borrow(who.as_tenant) as client:
        return {"job_id": job_id, **client.cancel(job_id)}


@router.post("/jobs/{job_id}/retry", responses=ERRORS, summary="Re-queue failed and cancelled tasks")
def retry_job(state: State, who: Who, job_id: str) -> dict[str, Any]:
    """Re-queue the job's failed and cancelled tasks: {"job_id", "requeued": N}."""
    with state.pool.borrow(who.as_tenant) as client:
        return {"job_id": job_id, **client.retry(job_id)}
