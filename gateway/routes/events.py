"""GET /v1/jobs/{id}/events: a job's live events as Server-Sent Events."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.auth import State, Who
from gateway.errors import ApiError, body, from_cutq
from gateway.routes.jobs import ERRORS
from gateway.sse import EventFeed, Item, stream
from shared.client import CutqError

router = APIRouter(prefix="/v1", tags=["events"])


class _EventStream(StreamingResponse):
    """A StreamingResponse that releases its feed however the response ends (even unstarted)."""

    def __init__(self, *args: object, release: EventFeed, state: State, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._feed, self._state = release, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._feed.stop()
            self._state.close_stream()


def _error_body(e: CutqError) -> dict[str, object]:
    err = from_cutq(e)
    return body(err.message, err.code)


@router.get("/jobs/{job_id}/events", name="job_events", response_class=StreamingResponse, responses={
    **ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "status, then task/job/progress, "
                                                                           "then end"}},
    summary="A job's live events (Server-Sent Events)")
async def job_events(state: State, who: Who, job_id: str) -> StreamingResponse:
    """`event: status` (the job now), then the broker's `task`, `job` and `progress` events as they happen,
    then `end` once no task is queued or running. EventSource clients should close on `end`."""
    if not state.open_stream():
        raise ApiError(503, f"too many event streams open ({state.settings.max_streams})", "too_many_streams",
                       {"Retry-After": "5"})
    queue: asyncio.Queue[Item] = asyncio.Queue()
    feed = EventFeed(state.pool, who.as_tenant, job_id, asyncio.get_running_loop(), queue)
    try:
        feed.start()
        first = await queue.get()  # the status, or why there is none (404 for another tenant's job)
        if first[0] == "error":
            raise first[1]
    except BaseException:
        feed.stop()
        state.close_stream()
        raise
    return _EventStream(stream(first, queue, state.settings.sse_keepalive_s, _error_body),
                        media_type="text/event-stream", release=feed, state=state,
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
