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
    if who.role == "gateway":
        return "a gateway key acts only for a tenant it names"  # reached only without as_tenant
    if kind in p.ADMIN_REQUESTS and not who.is_admin:
        return "only an admin key may do this"
    return None


def acting(who: Principal, msg: p.Message, secure: bool) -> Principal | str:
    """Whom a request acts as: a gateway key acts as a client of the tenant it names (without
    CURVE, anyone may: the open mode's gateway); anyone else naming a tenant is refused (a str)."""
    tenant = msg.as_tenant
    if tenant is None:
        if secure and who.role == "gateway":
            return "a gateway key must name the tenant it acts for"
        return who
    if secure and who.role != "gateway":
        return "only a gateway key may act for a tenant"
    if not tenant:
        return "the tenant acted for must have a name"
    return Principal(f"{who.name}@{tenant}", "client", tenant)


def can_see(who: Principal, tenant: str) -> bool:
    """Whether `who` may see (and act on) a job of `tenant`."""
    return who.is_admin or who.tenant == tenant


def scope(who: Principal) -> str | None:
    """The tenant a principal's listings are limited to (None: all tenants)."""
    return None if who.is_admin else who.tenant


def submit_tenant(who: Principal, requested: str, secure: bool) -> str:
    """The tenant a submission belongs to: the key's, unless admin or open mode."""
    if not who.is_admin and (secure or who.tenant):  # a client key, or a gateway acting for a tenant
        return who.tenant or "default"
    return requested or "default"
