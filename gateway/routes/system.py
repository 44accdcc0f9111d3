"""/healthz, /readyz and /v1/stats."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.auth import State, Who
from gateway.routes.jobs import ERRORS
from gateway.settings import OPEN_TENANT
from shared.client import CutqError

router = APIRouter(tags=["system"])


@router.get("/healthz", summary="The gateway process is up")
async def healthz() -> dict[str, Any]:
    """200 while the process serves; says nothing about the broker (that is /readyz)."""
    return {"ok": True}


@router.get("/readyz", summary="The broker answers and at least one worker is alive",
            responses={503: {"description": "not ready: no broker, or no live worker"}})
def readyz(state: State) -> JSONResponse:
    """200 {"ready": true, "workers": N}; 503 with the reason when the broker does not answer within
    a couple of seconds or no worker is alive."""
    try:
        stats = _probe(state)
    except CutqError as e:
        return JSONResponse({"ready": False, "broker": False, "error": str(e), "code": e.code}, status_code=503)
    workers = int(stats.get("workers_total") or 0)
    if workers < 1:
        return JSONResponse({"ready": False, "broker": True, "workers": 0, "error": "no worker is alive"},
                            status_code=503)
    return JSONResponse({"ready": True, "broker": True, "workers": workers})


def _probe(state: State) -> dict[str, Any]:
    """The broker's stats, asked as an admin would; with a gateway key (which must name a tenant)
    as the open tenant instead: the worker totals are the same for every tenant."""
    try:
        with state.pool.borrow(state.probe_tenant, timeout=state.settings.ready_timeout) as client:
            return client.stats()
    except CutqError as e:
        if e.code != "forbidden" or state.probe_tenant is not None:
            raise
    state.probe_tenant = OPEN_TENANT
    with state.pool.borrow(state.probe_tenant, timeout=state.settings.ready_timeout) as client:
        return client.stats()


@router.get("/v1/stats", tags=["jobs"], responses=ERRORS, summary="Queue counts and throughput")
def stats(state: State, who: Who) -> JSONResponse:
    """What `cutq stats --json` prints, for the token's tenant (everything for an admin token)."""
    with state.pool.borrow(who.as_tenant) as client:
        return JSONResponse(client.stats())
