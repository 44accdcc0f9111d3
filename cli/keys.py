"""`cutq keys init|add|list|revoke`: CURVE keys and roles, run on the broker's machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.output import print_json, table
from cli.parsing import HelpFormatter, Subparsers, add_command, data_dir, late_copy
from shared.client import CutqError


def cmd_keys(args: argparse.Namespace) -> int:
    from broker.keys import KeyRing, broker_cert_paths, init_keys, validate_key_name

    data = Path(args.data)
    if args.keys_command == "init":
        public = init_keys(data)
        print(f"created the broker's keys; give peers its public key: {public}")
        return 0
    if args.keys_command == "add":
        validate_key_name(args.name)  # before anything is read or written
    if not broker_cert_paths(data)[1].exists():
        raise CutqError(f"no broker keys in {data}: run `cutq keys init --data {data}` first", code="bad_request")
    ring = KeyRing(data)
    if args.keys_command == "add":
        secret = ring.add(args.name, args.role, args.tenant)
        if args.json:
            print_json({"name": args.name, "secret_certificate": str(secret),
                        "server_certificate": str(broker_cert_paths(data)[0])})
        else:
            print(f"created {args.role} key {args.name}: hand over {secret} (secret, mode 0600) "
                  f"and {broker_cert_paths(data)[0]} (the broker's public key)")
    elif args.keys_command == "revoke":
        ring.revoke(args.name)
        print(f"revoked {args.name}")
    else:
        entries = ring.entries()
        if args.json:
            print_json({"keys": entries})
        else:
            rows = [[e["name"], e["role"], e.get("tenant") or "-", "revoked" if e.get("revoked") else "active",
                     e["public_key"][:12] + "..."] for e in entries]
            print(table(rows, ["NAME", "ROLE", "TENANT", "STATE", "PUBLIC KEY"]))
    return 0


def register(sub: Subparsers) -> None:
    """Add keys with its actions to `sub`."""
    k = add_command(sub, "keys", help="CURVE keys and roles (run on the broker's machine)",
                    description="CURVE keys and roles, kept in the broker's data directory: `init` turns "
                                "encryption and authentication on; the broker reads added and revoked keys "
                                "while it runs.")
    data_dir(k)
    k.add_argument("--json", action="store_true", help="print JSON instead of text")
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION", title="actions",
                             help="one of these:")

    def action(name: str, helptext: str) -> argparse.ArgumentParser:
        a: argparse.ArgumentParser = ksub.add_parser(name, help=helptext, description=helptext[:1].upper()
                                                     + helptext[1:] + ".", formatter_class=HelpFormatter)
        return a

    ki = action("init", "create the broker's key pair (turns CURVE on)")
    ka = action("add", "create and register a key for a peer")
    ka.add_argument("name", help="the key's name (its files are NAME.key and NAME.key_secret)")
    ka.add_argument("--role", required=True, choices=["client", "admin", "worker", "gateway"],
                    help="client: its tenant's jobs; admin: everything; worker: runs tasks; "
                         "gateway: the HTTP gateway, acting for the tenant each request names")
    ka.add_argument("--tenant", help="the tenant a client key acts for")
    kl = action("list", "registered keys")
    kr = action("revoke", "revoke a key (takes effect on a running broker)")
    kr.add_argument("name", help="the key's name")
    for a in (ki, ka, kl, kr):  # `keys add X --data D` as well as `keys --data D add X`
        late_copy(k, a)
    k.set_defaults(func=cmd_keys, daemon=True)
