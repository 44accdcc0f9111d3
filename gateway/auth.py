"""Who a request acts for: the bearer token's principal, or tenant "default" without tokens.

The gateway's shared objects live on `app.state.cutq` (a GatewayState), reached through
the `gateway_state` dependency: no module-level globals.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.broker import BrokerPool
from gateway.errors import ApiError
from gateway.settings import OPEN_TENANT, GatewaySettings
from gateway.tokens import Principal, TokenStore

OPEN = Principal("open", OPEN_TENANT, "client")
_bearer = HTTPBearer(auto_error=False, description="an API token from `cutq tokens add`")


@dataclass
class GatewayState:
    """What every request may use: settings, the broker pool, the tokens, the stream count."""

    settings: GatewaySettings
    pool: BrokerPool
    tokens: TokenStore | None
    probe_tenant: str | None = None  # what /readyz names to the broker (set once a gateway key refuses None)
    _streams: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open_stream(self) -> bool:
        """Count one more event stream; False when settings.max_streams are open already."""
        with self._lock:
            if self._streams >= self.settings.max_streams:
                return False
            self._streams += 1
            return True

    def close_stream(self) -> None:
        with self._lock:
            self._streams -= 1


def gateway_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.cutq
    return state


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The token's principal; 401 for a missing, unknown or revoked token (the same answer for all).

    Async (on the loop, no thread hop): a lookup is a stat of the tokens file, and a read only when
    it changed."""
    tokens = gateway_state(request).tokens
    if tokens is None:
        return OPEN
    who = tokens.lookup(credentials.credentials) if credentials and credentials.scheme.lower() == "bearer" else None
    if who is None:
        raise ApiError(401, "a valid API token is required: Authorization: Bearer <token> (`cutq tokens add`)",
                       "unauthorized", {"WWW-Authenticate": 'Bearer realm="cutq"'})
    return who


State = Annotated[GatewayState, Depends(gateway_state)]
Who = Annotated[Principal, Depends(principal)]
