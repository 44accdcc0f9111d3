"""The FastAPI application and the uvicorn server around it (`cutq http`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import errors
from gateway.auth import GatewayState
from gateway.broker import BrokerPool
from gateway.metrics import GatewayMetrics, MetricsMiddleware
from gateway.routes import events, jobs, results, system
from gateway.settings import GatewaySettings, check_exposure
from gateway.tokens import TokenStore
from shared.sdnotify import Notifier

log = logging.getLogger("cutq.http")

DESCRIPTION = """A REST front end on a cutq broker: submit images, follow jobs, download cut-outs.

Authenticate with `Authorization: Bearer <token>` (tokens from `cutq tokens add`); every
error is `{"error": "...", "code": "..."}`. Full guide: the README's "HTTP API" section."""


class GatewaySetupError(Exception):
    """Settings the gateway refuses to serve with (one line for the operator)."""


class _TooLarge(Exception):
    pass


class BodyLimit:
    """413 for a request body over `limit` bytes: by its Content-Length at once, else as it streams in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen, over, started = 0, False, False

        async def counted() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _TooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if over:  # the app answered a body it could not finish reading: say why instead
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._refuse(send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        payload = errors.body(f"request body over {self.limit} bytes", "too_large")
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": data})


def create_app(settings: GatewaySettings, *, pool: BrokerPool | None = None,
               tokens: TokenStore | None = None, notifier: Notifier | None = None) -> FastAPI:
    """The application: routes under /v1, /healthz, /readyz, docs at /docs."""
    if tokens is None and settings.tokens_path is not None:
        tokens = TokenStore(settings.tokens_path)
    state = GatewayState(settings, pool or BrokerPool(settings), tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watchdog = asyncio.create_task(_watchdog(notifier)) if notifier and notifier.watchdog_interval else None
        try:
            yield
        finally:
            if watchdog is not None:
                watchdog.cancel()
            state.pool.close()

    app = FastAPI(title="cutq", version="1", description=DESCRIPTION, lifespan=lifespan,
                  docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")
    app.state.cutq = state
    errors.install(app)
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    if settings.cors_origins:  # outermost, so a refusal (401, 413) still carries the CORS headers
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
                           expose_headers=["Retry-After", "Location"], max_age=600)
    for module in (jobs, results, events, system):
        app.include_router(module.router)
    metrics = GatewayMetrics()
    app.include_router(metrics.router())
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


async def _watchdog(notifier: Notifier) -> None:
    """WATCHDOG=1 from the event loop itself: a wedged loop stops the pings and systemd restarts us."""
    while True:
        notifier.watchdog(time.monotonic())
        await asyncio.sleep(1.0)


class _Server(uvicorn.Server):
    """uvicorn's server, telling systemd READY=1 once its socket is bound (and STOPPING=1 at the end)."""

    def __init__(self, config: uvicorn.Config, notifier: Notifier, on_ready: str) -> None:
        super().__init__(config)
        self.notifier, self.on_ready = notifier, on_ready

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started:
            log.info("%s", self.on_ready)
            self.notifier.status(self.on_ready)
            self.notifier.ready()

    async def shutdown(self, sockets: Any = None) -> None:
        self.notifier.stopping()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, without raising SIGINT/SIGTERM again after a clean stop: exit 0, like the broker."""
        with super().capture_signals():
            try:
                yield
            finally:
                getattr(self, "_captured_signals", []).clear()


def serve(settings: GatewaySettings, *, access_log: bool = False) -> int:
    """Run the gateway until SIGINT/SIGTERM; 0 after a clean stop, 1 when it could not serve."""
    problem = check_exposure(settings)
    if problem:
        raise GatewaySetupError(problem)
    if settings.tokens_path is not None and not settings.tokens_path.exists():
        log.warning("tokens file %s does not exist yet: every /v1 request is refused until "
                    "`cutq tokens add NAME --tenant T --file %s`", settings.tokens_path, settings.tokens_path)
    notifier = Notifier.from_env(os.environ)
    app = create_app(settings, notifier=notifier)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=access_log,
                            server_header=False, timeout_graceful_shutdown=5, lifespan="on")
    where = f"[{settings.host}]" if ":" in settings.host else settings.host
    ready = (f"cutq http serving http://{where}:{settings.port} (docs /docs) for broker {settings.connect}; "
             f"{'tokens ' + str(settings.tokens_path) if settings.tokens_path else 'no tokens: tenant default'}")
    server = _Server(config, notifier, ready)
    server.run()
    notifier.close()
    return 0 if server.started else 1
