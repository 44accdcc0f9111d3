"""API tokens: each bound to a tenant and a role, stored as sha256 digests in a 0600 JSON file.

A token is 32 random bytes (urlsafe base64 after a `cutq_` prefix), shown once by
`cutq tokens add` and never stored or logged; the file holds only its SHA-256.  The
running gateway re-reads the file when it changes, so `cutq tokens revoke` takes effect
on the next request.  The file is written under a temporary name with mode 0600 and
renamed into place, whatever the umask.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("client", "admin")
PREFIX = "cutq_"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_TENANT = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
FORMAT_VERSION = 1
log = logging.getLogger("cutq.http")


class TokenError(ValueError):
    """A bad name, role or tenant, an unknown token name, or an unreadable tokens file."""


@dataclass(frozen=True)
class Principal:
    """Who an HTTP request acts for: a client of `tenant`, or an admin (across tenants)."""

    name: str
    tenant: str
    role: str

    @property
    def as_tenant(self) -> str | None:
        """The tenant the gateway names to the broker: none for an admin."""
        return None if self.role == "admin" else self.tenant


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    return PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


class TokenStore:
    """The tokens file: add, list, revoke (the `cutq tokens` commands) and look up (the gateway)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) of what _by_digest holds
        self._by_digest: dict[str, Principal] = {}

    # ------------------------------------------------------------------ the file

    def _read(self) -> list[dict[str, Any]]:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise TokenError(f"cannot read tokens file {self.path}: {e.strerror}") from e
        try:
            data = json.loads(raw)
            tokens = data["tokens"]
            if not isinstance(tokens, list) or not all(isinstance(t, dict) for t in tokens):
                raise TypeError("tokens is not a list of objects")
        except (ValueError, KeyError, TypeError) as e:
            raise TokenError(f"tokens file {self.path} is not valid: {e}") from e
        return tokens

    def _write(self, tokens: list[dict[str, Any]]) -> None:
        folder = self.path.parent
        if not folder.exists():
            folder.mkdir(parents=True, mode=0o700)
        tmp = folder / f".{self.path.name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            with os.fdopen(fd, "w") as f:
                fd = -1
                json.dump({"version": FORMAT_VERSION, "tokens": tokens}, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            tmp.unlink(missing_ok=True)
            raise

    # ------------------------------------------------------------------ cutq tokens

    def add(self, name: str, tenant: str, role: str = "client") -> str:
        """Register a new token and return it (the only time it is ever seen).

        A name already in use by a live token is refused; a revoked one's record is replaced."""
        if not _NAME.fullmatch(name):
            raise TokenError(f"token name {name[:70]!r}: 1-64 letters, digits, '.', '_' or '-', "
                             f"not starting with '.' or '-'")
        if role not in ROLES:
            raise TokenError(f"role {role!r}: one of {', '.join(ROLES)}")
        if not _TENANT.fullmatch(tenant):
            raise TokenError(f"tenant {tenant[:70]!r}: 1-128 printable characters")
        tokens = self._read()
        if any(t.get("name") == name and not t.get("revoked") for t in tokens):
            raise TokenError(f"a token named {name!r} exists already (revoke it first)")
        token = new_token()
        tokens = [t for t in tokens if t.get("name") != name]
        tokens.append({"name": name, "tenant": tenant, "role": role, "sha256": digest(token),
                       "created": round(time.time(), 3), "revoked": None})
        self._write(tokens)
        return token

    def revoke(self, name: str) -> None:
        tokens = self._read()
        for t in tokens:
            if t.get("name") == name and not t.get("revoked"):
                t["revoked"] = round(time.time(), 3)
                self._write(tokens)
                return
        raise TokenError(f"no live token named {name!r} in {self.path}")

    def entries(self) -> list[dict[str, Any]]:
        """Every token's name, tenant, role, creation and revocation times (never the digest)."""
        return [{k: t.get(k) for k in ("name", "tenant", "role", "created", "revoked")} for t in self._read()]

    # ------------------------------------------------------------------ the gateway

    def lookup(self, token: str) -> Principal | None:
        """The principal a presented token stands for, None when unknown or revoked.

        Re-reads the file when its inode, size or mtime changed; a file that became
        unreadable or invalid refuses every token (fail closed) until it is fixed."""
        self._refresh()
        return self._by_digest.get(digest(token))

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
            seen: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            seen = None
        with self._lock:
            if seen == self._seen and seen is not None:
                return
            try:
                tokens = self._read()
            except TokenError as e:  # logged once per change of the file: it is cached below
                log.warning("%s: refusing every token until it is fixed", e)
                tokens = []
            self._by_digest = {
                str(t["sha256"]): Principal(str(t["name"]), str(t["tenant"]), str(t["role"]))
                for t in tokens
                if not t.get("revoked") and t.get("role") in ROLES and isinstance(t.get("sha256"), str)
                and isinstance(t.get("tenant"), str) and isinstance(t.get("name"), str)
            }
            self._seen = seen
