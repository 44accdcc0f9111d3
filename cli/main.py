"""The `cutq` command line: build the parser from each command group's `register`, then dispatch.

Client commands go through shared.client; every read command has --json; errors
are one line on stderr (set CUTQ_DEBUG=1 for a traceback).  Exit codes: 0 ok,
1 a job or task did not succeed (or an unexpected error), 2 a refused request,
3 no broker.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from cli import admin, daemons, data, http, jobs, keys
from shared.client import BrokerUnavailable, Client, CutqError
from shared.config import default_endpoint
from shared.security import Credentials, CredentialsError

# errors of the daemons' own set-up that deserve one line and exit 2, by module and class name:
# looked up only in modules already imported, so a client command never imports the broker
_SETUP_ERRORS = (("broker.keys", "KeysError"), ("broker.server", "BrokerSetupError"))


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--connect", default=default_endpoint(), help="broker endpoint ($CUTQ_CONNECT)")
    common.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the broker")
    common.add_argument("-v", "--verbose", action="store_true", help="log more")
    common.add_argument("--key", help="this peer's secret CURVE certificate ($CUTQ_KEY)")
    common.add_argument("--server-key", help="the broker's public CURVE certificate ($CUTQ_SERVER_KEY)")
    parser = argparse.ArgumentParser(prog="cutq", description="A distributed background-removal queue.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_parser = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return _add_parser(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]
    # in this order, so `cutq --help` lists the commands as it always has
    for register in (daemons.register, jobs.register, admin.register_stats, keys.register, admin.register,
                     data.register, http.register):
        register(sub, common)
    return parser


def _setup_error(e: Exception) -> bool:
    for module, name in _SETUP_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(e, cls):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if getattr(args, "daemon", False) else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    func: Callable[..., int] = args.func
    try:
        if getattr(args, "daemon", False):
            return int(func(args))
        credentials = Credentials.from_env(os.environ, args.key, args.server_key)
        with Client(args.connect, timeout=args.timeout, credentials=credentials) as client:
            return int(func(args, client))
    except BrokerUnavailable as e:
        print(f"cutq: {e} (is `cutq broker` running? set --connect or CUTQ_CONNECT)", file=sys.stderr)
        return 3
    except (CutqError, CredentialsError) as e:
        print(f"cutq: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # the promise: one line, never a traceback (CUTQ_DEBUG=1 for one)
        if os.environ.get("CUTQ_DEBUG"):
            raise
        if _setup_error(e):
            print(f"cutq: {e}", file=sys.stderr)
            return 2
        print(f"cutq: {e.__class__.__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
