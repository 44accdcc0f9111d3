"""Authorisation: what a principal may send and which jobs it may see.  Pure.

Roles: `worker` keys may only speak the worker protocol (and so are the only ones
given tasks); `client` keys act within their tenant; `admin` keys act on
everything, and alone may pause dispatch or set tenant policies.  A job of
another tenant is "not found", never "forbidden", so ids leak nothing.
"""

from __future__ import annotations

from broker.keys import Principal
from shared import protocol as p


def refusal(who: Principal, msg: p.Message, secure: bool) -> str | None:
    """Why `who` may not send `msg` (None when it may)."""
    kind = type(msg)
    if not secure:
        return None
    if kind in p.WORKER_MESSAGES:
        return None if who.role == "worker" else f"a {who.role} key cannot act as a worker"
    if who.role == "worker":
        return "a worker key cannot make client requests"
    if kind in p.ADMIN_REQUESTS and not who.is_admin:
        return "only an admin key may do this"
    return None


def can_see(who: Principal, tenant: str) -> bool:
    """Whether `who` may see (and act on) a job of `tenant`."""
    return who.is_admin or who.tenant == tenant


def scope(who: Principal) -> str | None:
    """The tenant a principal's listings are limited to (None: all tenants)."""
    return None if who.is_admin else who.tenant


def submit_tenant(who: Principal, requested: str, secure: bool) -> str:
    """The tenant a submission belongs to: the key's, unless admin or open mode."""
    if secure and not who.is_admin:
        return who.tenant or "default"
    return requested or "default"
