"""The gateway's settings: one frozen dataclass, built by `cutq http` (or a test) and passed in."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.config import DEFAULT_ENDPOINT
from shared.security import Credentials

DEFAULT_LISTEN = "127.0.0.1:8080"
OPEN_TENANT = "default"  # without a tokens file every request acts for this tenant


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway needs; nothing here is read from the environment."""

    host: str = "127.0.0.1"
    port: int = 8080
    connect: str = DEFAULT_ENDPOINT
    credentials: Credentials | None = None
    tokens_path: Path | None = None  # None: no API tokens (loopback only, unless insecure)
    insecure: bool = False  # serve a non-loopback address without tokens
    timeout: float = 15.0  # seconds a broker request may take
    ready_timeout: float = 2.0  # /readyz's wait for the broker
    pool_size: int = 16  # idle broker Clients kept for reuse (more are made while busy)
    max_streams: int = 256  # concurrent /events streams (one thread each)
    max_upload_bytes: int = 1024 * 1024 * 1024  # a whole POST /v1/jobs body
    sse_keepalive_s: float = 15.0
    cors_origins: tuple[str, ...] = ()  # web pages (scheme://host[:port]) allowed to call the API from a browser


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[::1]:PORT` or `:PORT` (loopback) -> (host, port); ValueError with the reason."""
    raw = text.strip()
    host, sep, port_text = raw.rpartition(":")
    if not sep:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"--listen {text!r}: the port must be a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"--listen {text!r}: the port must be 0-65535")
    return host, port


def is_loopback_host(host: str) -> bool:
    """True for an address no other machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_tokens_path(env: Mapping[str, str] | None = None) -> Path:
    """$CUTQ_TOKENS, else $XDG_CONFIG_HOME/cutq/http-tokens.json, else ~/.config/cutq/http-tokens.json."""
    env = os.environ if env is None else env
    if env.get("CUTQ_TOKENS"):
        return Path(env["CUTQ_TOKENS"])
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cutq" / "http-tokens.json"


def check_exposure(settings: GatewaySettings) -> str | None:
    """Why these settings must not serve (None when they may): no tokens off loopback without --insecure."""
    if settings.tokens_path is None and not settings.insecure and not is_loopback_host(settings.host):
        return (f"refusing to listen on {settings.host} without API tokens (anyone could submit and read "
                f"jobs): add tokens with `cutq tokens add`, pass --tokens FILE, or --insecure")
    return None
