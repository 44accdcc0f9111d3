"""CURVE credentials for the peers (client, TUI, worker) and the loopback rule.

A peer holds its own secret certificate (written by `cutq keys add`) and the
broker's public certificate; `Credentials.apply` puts both on a socket before it
connects.  Files are pyzmq/czmq certificate files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

_LOCAL = re.compile(r"^(ipc|inproc)://|^tcp://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?$")


def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc/inproc and loopback tcp endpoints, which no other machine can reach."""
    return bool(_LOCAL.match(endpoint))


class CredentialsError(ValueError):
    """A certificate file that is missing, unreadable or lacks a secret key."""


@dataclass(frozen=True)
class Credentials:
    """A peer's CURVE key pair and the broker's public key (all z85 bytes)."""

    public: bytes
    secret: bytes
    server: bytes

    @classmethod
    def load(cls, cert: str | os.PathLike[str], server_cert: str | os.PathLike[str]) -> Credentials:
        """Read this peer's secret certificate and the broker's public certificate."""
        try:
            public, secret = zmq.auth.load_certificate(cert)
            server, _ = zmq.auth.load_certificate(server_cert)
        except (OSError, ValueError) as e:
            raise CredentialsError(f"cannot load CURVE certificate: {e}") from e
        if not secret:
            raise CredentialsError(f"{cert} holds no secret key (pass the .key_secret file)")
        return cls(public, secret, server)

    @classmethod
    def from_env(cls, env: Mapping[str, str], cert: str | None = None, server: str | None = None) -> Credentials | None:
        """Flags first, then $CUTQ_KEY / $CUTQ_SERVER_KEY; None when neither is set."""
        cert = cert or env.get("CUTQ_KEY")
        server = server or env.get("CUTQ_SERVER_KEY")
        if not cert and not server:
            return None
        if not cert or not server:
            raise CredentialsError("CURVE needs both a client certificate (--key/CUTQ_KEY) "
                                   "and the broker's public key (--server-key/CUTQ_SERVER_KEY)")
        return cls.load(Path(cert), Path(server))

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server
