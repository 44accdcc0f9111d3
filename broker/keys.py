"""Who may connect, as whom: the broker's CURVE keys, the registry of peer keys with
their roles and tenants, and the ZAP handler that checks every handshake.

Layout in the data dir:  keys/broker.key, keys/broker.key_secret (0600),
keys/certs/NAME.key, keys/certs/NAME.key_secret (0600, hand it to the peer),
keys/registry.json  {z85 public key: {"name", "role", "tenant", "revoked"}}.
The broker re-reads the registry when it changes, so `cutq keys revoke` takes
effect on a live broker: at the next handshake, and at the next message of an
open connection (every message is authorised by its User-Id, set here by ZAP).
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import zmq
import zmq.auth

log = logging.getLogger("cutq.keys")
ROLES = ("client", "admin", "worker")
ZAP_ENDPOINT = "inproc://zeromq.zap.01"


class KeysError(ValueError):
    """A key management request that cannot be done (duplicate name, unknown key...)."""


@dataclass(frozen=True)
class Principal:
    """Who sent a message: from the authenticated key, or the open mode's stand-in."""

    name: str
    role: str
    tenant: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


# without CURVE there is no identity to check: every peer may do everything
OPEN = Principal("anonymous", "admin", None)


def keys_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "keys"


@contextmanager
def _private_files() -> Iterator[None]:
    # pyzmq writes certificates with the process umask (0644 usually): a secret key
    # must never be readable by others, not even for the moment before a chmod
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def broker_cert_paths(data_dir: Path) -> tuple[Path, Path]:
    d = keys_dir(data_dir)
    return d / "broker.key", d / "broker.key_secret"


def curve_enabled(data_dir: Path) -> bool:
    """CURVE is on exactly when the broker has a key pair in its data dir."""
    return broker_cert_paths(data_dir)[1].exists()


def init_keys(data_dir: Path) -> Path:
    """Create the broker's key pair (once); returns the public certificate's path."""
    public, secret = broker_cert_paths(data_dir)
    if secret.exists():
        raise KeysError(f"broker keys already exist in {secret.parent}")
    secret.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _private_files():
        zmq.auth.create_certificates(secret.parent, "broker")
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return public


class KeyRing:
    """The registry of peer keys, re-read from disk when its file changes."""

    def __init__(self, data_dir: Path, clock=time.monotonic) -> None:
        self.path = keys_dir(data_dir) / "registry.json"
        self._clock = clock
        self._entries: dict[str, dict] = {}
        self._mtime: float | None = None
        self._next_check = 0.0
        self.version = 0  # bumped whenever the entries change, so the broker can re-check who is connected
        self.reload()

    def reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            if self._mtime is not None:
                self.version += 1
            self._entries, self._mtime = {}, None
            return
        if mtime != self._mtime:
            try:
                self._entries = json.loads(self.path.read_text())
                self._mtime = mtime
                self.version += 1
            except (OSError, ValueError) as e:  # keep the last good registry
                log.error("cannot read %s: %s", self.path, e)

    def refresh(self) -> None:
        """Re-read the registry if it may have changed (at most every 0.2 s)."""
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + 0.2
            self.reload()

    def lookup(self, public_z85: str) -> Principal | None:
        """The principal for an active key, None for an unknown or revoked one."""
        e = self._entries.get(public_z85)
        if e is None or e.get("revoked"):
            return None
        return Principal(e["name"], e["role"], e.get("tenant"))

    # -------------------------------------------------------------- management (the `cutq keys` commands)

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._entries, indent=2, sort_keys=True))
        os.replace(tmp, self.path)
        self.reload()

    def add(self, name: str, role: str, tenant: str | None) -> Path:
        """Create a certificate for a peer and register its public key; returns the secret file."""
        if role not in ROLES:
            raise KeysError(f"role must be one of {', '.join(ROLES)}")
        if role == "client" and not tenant:
            raise KeysError("a client key needs --tenant")
        if any(e["name"] == name for e in self._entries.values()):
            raise KeysError(f"a key named {name!r} exists (revoke it or pick another name)")
        certs = self.path.parent / "certs"
        certs.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _private_files():
            public_file, secret_file = zmq.auth.create_certificates(certs, name)
        os.chmod(secret_file, 0o600)
        public, _ = zmq.auth.load_certificate(public_file)
        self._entries[public.decode()] = {"name": name, "role": role, "tenant": tenant, "revoked": False,
                                          "created": time.time()}
        self._save()
        return Path(secret_file)

    def revoke(self, name: str) -> None:
        for e in self._entries.values():
            if e["name"] == name:
                e["revoked"] = True
                e["revoked_at"] = time.time()
                self._save()
                return
        raise KeysError(f"no key named {name!r}")

    def entries(self) -> list[dict]:
        return [{"public_key": k, **v} for k, v in sorted(self._entries.items(), key=lambda kv: kv[1]["name"])]


class ZapHandler:
    """Answers libzmq's ZAP requests from the broker's own loop (no thread needed)."""

    def __init__(self, context: zmq.Context, keyring: KeyRing) -> None:
        self.keyring = keyring
        self.sock = context.socket(zmq.REP)
        self.sock.linger = 0
        self.sock.bind(ZAP_ENDPOINT)
        self.refused = 0

    def handle(self) -> None:
        """Answer every waiting handshake check."""
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.sock.send_multipart(self._answer(frames))

    def _answer(self, frames: list[bytes]) -> list[bytes]:
        if len(frames) < 6:
            return [b"1.0", b"", b"500", b"malformed ZAP request", b"", b""]
        version, request_id, _domain, address, _identity, mechanism = frames[:6]
        if mechanism != b"CURVE" or len(frames) < 7 or len(frames[6]) != 32:
            self.refused += 1
            return [version, request_id, b"400", b"CURVE required", b"", b""]
        self.keyring.refresh()
        key = zmq.utils.z85.encode(frames[6]).decode()
        who = self.keyring.lookup(key)
        if who is None:  # a key added since the last (throttled) refresh must not be refused for good
            self.keyring.reload()
            who = self.keyring.lookup(key)
        if who is None:
            self.refused += 1
            log.warning("refused handshake from %s: unknown or revoked key %s...", address.decode(errors="replace"), key[:8])
            return [version, request_id, b"400", b"unknown or revoked key", b"", b""]
        return [version, request_id, b"200", b"OK", key.encode(), b""]

    def close(self) -> None:
        self.sock.close(0)
