"""`cutq http` (the REST gateway) and `cutq tokens add|list|revoke` (its API tokens).

The gateway's packages (fastapi, uvicorn) are imported inside the commands only, so
every other `cutq` command starts without them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cli.output import ago, print_json, table
from cli.parsing import HelpFormatter, Subparsers, add_command, client_options, late_copy
from shared.config import endpoint_problem
from shared.security import Credentials

_DEFAULT_LISTEN = "127.0.0.1:8080"


def _tokens_path(given: str | None, *, must_exist: bool) -> Path | None:
    """--tokens/--file, else $CUTQ_TOKENS, else the default file (for the gateway: only if it exists)."""
    from gateway.settings import default_tokens_path

    if given:
        return Path(given)
    path = default_tokens_path()
    if must_exist and "CUTQ_TOKENS" not in os.environ and not path.exists():
        return None
    return path


def cmd_http(args: argparse.Namespace) -> int:
    problem = endpoint_problem(args.connect)
    if problem:
        print(f"cutq: bad --connect endpoint {args.connect!r}: {problem}", file=sys.stderr)
        return 2
    from gateway.app import GatewaySetupError, serve
    from gateway.settings import GatewaySettings, parse_listen

    try:
        host, port = parse_listen(args.listen)
    except ValueError as e:
        print(f"cutq: {e}", file=sys.stderr)
        return 2
    settings = GatewaySettings(
        host=host, port=port, connect=args.connect, timeout=args.timeout,
        credentials=Credentials.from_env(os.environ, args.key, args.server_key),
        tokens_path=_tokens_path(args.tokens, must_exist=True), insecure=args.insecure,
        max_streams=args.max_streams, cors_origins=tuple(args.cors_origin),
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
    )
    try:
        return serve(settings, access_log=args.access_log)
    except GatewaySetupError as e:
        print(f"cutq: {e}", file=sys.stderr)
        return 2


def cmd_tokens(args: argparse.Namespace) -> int:
    from gateway.tokens import TokenError, TokenStore

    path = _tokens_path(args.file, must_exist=False)
    assert path is not None
    store = TokenStore(path)
    try:
        if args.tokens_command == "add":
            tenant = args.tenant or ("default" if args.role == "admin" else None)
            if tenant is None:
                raise TokenError("a client token needs --tenant T (the tenant it acts for)")
            token = store.add(args.name, tenant, args.role)
            if args.json:
                print_json({"name": args.name, "tenant": tenant, "role": args.role, "token": token, "file": str(path)})
            else:
                print(f"created {args.role} token {args.name} for tenant {tenant} in {path}")
                print(token)
                print("it is shown only this once (the file keeps its SHA-256); send it as "
                      "`Authorization: Bearer <token>`", file=sys.stderr)
        elif args.tokens_command == "revoke":
            store.revoke(args.name)
            print(f"revoked {args.name} (a running gateway refuses it from its next request)")
        else:
            entries = store.entries()
            if args.json:
                print_json({"tokens": entries, "file": str(path)})
            else:
                rows = [[e["name"], e["tenant"], e["role"], ago(e["created"]),
                         "revoked " + ago(e["revoked"]) if e["revoked"] else "active"] for e in entries]
                print(table(rows, ["NAME", "TENANT", "ROLE", "CREATED", "STATE"]))
    except TokenError as e:
        print(f"cutq: {e}", file=sys.stderr)
        return 2
    return 0


def _megabytes(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of MiB, got {value!r}") from None
    if not n > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of MiB, got {value!r}")
    return n


def register(sub: Subparsers) -> None:
    """Add http and tokens to `sub`."""
    h = add_command(sub, "http", help="the REST gateway: HTTP in front of the broker (FastAPI on uvicorn)",
                    description="Serve the REST gateway: HTTP in front of the broker, for web shops and "
                                "scripts; API tokens bind each caller to a tenant.")
    client_options(h, json=False)
    h.add_argument("--listen", default=_DEFAULT_LISTEN, metavar="HOST:PORT",
                   help="address to serve on (default %(default)s; [::1]:PORT for IPv6)")
    h.add_argument("--tokens", metavar="FILE",
                   help="API tokens file ($CUTQ_TOKENS; default ~/.config/cutq/http-tokens.json when it exists); "
                        "without one every request acts for tenant 'default' and only loopback is served")
    h.add_argument("--insecure", action="store_true",
                   help="serve a non-loopback address without API tokens (anyone may submit and read jobs)")
    h.add_argument("--max-upload-mb", type=_megabytes, default=1024.0, metavar="MIB",
                   help="largest request body, in MiB (default %(default)g); bigger ones get 413")
    h.add_argument("--max-streams", type=int, default=256, metavar="N",
                   help="most event streams open at once (one thread each)")
    h.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web page's origin (https://shop.example) allowed to call the API from a browser; "
                        "repeat for more (default: none)")
    h.add_argument("--access-log", action="store_true", help="log every request (never its token)")
    h.set_defaults(func=cmd_http, daemon=True)

    t = add_command(sub, "tokens", help="API tokens of the HTTP gateway (add prints the token once)",
                    description="API tokens of the HTTP gateway, in its tokens file: each bound to a tenant "
                                "and a role. `add` prints the token once; the file keeps only its SHA-256.")
    t.add_argument("--file", metavar="FILE",
                   help="the tokens file ($CUTQ_TOKENS; default ~/.config/cutq/http-tokens.json)")
    t.add_argument("--json", action="store_true", help="print JSON instead of text")
    tsub = t.add_subparsers(dest="tokens_command", required=True, metavar="ACTION", title="actions",
                             help="one of these:")

    def action(name: str, helptext: str) -> argparse.ArgumentParser:
        a: argparse.ArgumentParser = tsub.add_parser(name, help=helptext, description=helptext[:1].upper()
                                                     + helptext[1:] + ".", formatter_class=HelpFormatter)
        return a

    ta = action("add", "create a token bound to a tenant and a role; prints it once")
    ta.add_argument("name", help="the token's name (for list and revoke)")
    ta.add_argument("--tenant", help="the tenant a client token acts for (admin: the default tenant to submit as)")
    ta.add_argument("--role", default="client", choices=["client", "admin"],
                    help="client: its tenant's jobs only; admin: every tenant (needs an admin broker key or open mode)")
    tl = action("list", "tokens: name, tenant, role, state (never the token)")
    tr = action("revoke", "revoke a token (a running gateway refuses it at once)")
    tr.add_argument("name", help="the token's name")
    for a in (ta, tl, tr):  # `tokens add X --file F` as well as `tokens --file F add X`
        late_copy(t, a)
    t.set_defaults(func=cmd_tokens, daemon=True)
