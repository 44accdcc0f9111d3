"""The gateway's own Prometheus metrics: requests by route and status, and their latency.

`/metrics` is served by the gateway itself (no token: scrape it on a private address);
labels use the route's template (`/v1/jobs/{job_id}`), never the raw path, so job ids
do not explode the series.
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    """The registry and the two families the middleware fills."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("cutq_http_requests", "HTTP requests by method, route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("cutq_http_request_seconds", "Time to the response's first byte",
                                 ["method", "route"], buckets=_BUCKETS, registry=self.registry)

    def router(self) -> APIRouter:
        router = APIRouter()

        @router.get("/metrics", include_in_schema=False)
        def metrics() -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        return router


class MetricsMiddleware:
    """Counts each request and times it to its response's start."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, method = time.perf_counter(), scope["method"]

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                # the router records the matched route in the scope; else match it ourselves
                route = getattr(scope.get("route"), "path", None) or _route_of(scope)
                self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
                self.metrics.requests.labels(method, route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, timed)


def _route_of(scope: Scope) -> str:
    app = scope.get("app")
    for route in getattr(getattr(app, "router", None), "routes", []):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "other"))
    return "other"
