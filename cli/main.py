"""The `cutq` command line: build the parser from each command group's `register`, then dispatch.

Client commands go through shared.client; every read command has --json; errors
are one line on stderr (set CUTQ_DEBUG=1 for a traceback).  Exit codes: 0 ok,
1 a job or task did not succeed (or an unexpected error), 2 a refused request or
bad input (a usage error, a bad endpoint, a file or folder that cannot be read or
written, an unknown or ambiguous job id), 3 no broker, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from importlib import metadata

from cli import admin, daemons, data, http, jobs, keys
from cli.parsing import HelpFormatter, Parser
from shared.client import BrokerUnavailable, Client, CutqError
from shared.security import Credentials, CredentialsError

# errors of the daemons' own set-up that deserve one line and exit 2, by module and class name:
# looked up only in modules already imported, so a client command never imports the broker
_SETUP_ERRORS = (("broker.keys", "KeysError"), ("broker.server", "BrokerSetupError"))


def version() -> str:
    """The installed distribution's version ("unknown" when cutq runs from a bare checkout)."""
    try:
        return metadata.version("cutq")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cutq", formatter_class=HelpFormatter,
                    description="A distributed background-removal queue: a broker, rembg workers, and this "
                                "command to submit images, follow jobs and fetch the cut-outs.",
                    epilog="`cutq COMMAND --help` describes a command. Exit codes: 0 ok, 1 a job or task did "
                           "not succeed, 2 a refused request or bad input, 3 no broker, 130 interrupted.")
    parser.add_argument("--version", action="version", version=f"cutq {version()}",
                        help="print cutq's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands",
                               help="one of these:")
    # in this order, so `cutq --help` lists the commands as it always has
    for register in (daemons.register, jobs.register, admin.register_stats, keys.register, admin.register,
                     data.register, http.register):
        register(sub)
    return parser


def _setup_error(e: Exception) -> bool:
    for module, name in _SETUP_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(e, cls):
            return True
    return False


def _unavailable(e: BrokerUnavailable, args: argparse.Namespace) -> str:
    keys = getattr(args, "key", None) or os.environ.get("CUTQ_KEY")
    hint = "is `cutq broker` running? set --connect or CUTQ_CONNECT" + (
        "; are --key and --server-key this broker's?" if keys else "")
    return f"cutq: {e} ({hint})"


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
        print(_unavailable(e, args), file=sys.stderr)
        return 3
    except (CutqError, CredentialsError) as e:
        print(f"cutq: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cutq: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cutq list | head`: the reader has gone, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush stays quiet
        return 141
    except OSError as e:  # a local file or folder: say which, in one line
        if os.environ.get("CUTQ_DEBUG"):
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"cutq: {e.strerror or e}{where}", file=sys.stderr)
        return 2
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
