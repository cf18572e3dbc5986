"""`fieldhub tls ensure`: TLS material for the device listener (the local stack's, or a broker
host's: docs/deploy.md, "TLS for devices")."""

from __future__ import annotations

import argparse
from pathlib import Path

from fieldhub.cli import Subparsers
from fieldhub.core.config import Settings
from fieldhub.core.tls import ensure_tls


def register(subparsers: Subparsers) -> None:
    tls = subparsers.add_parser("tls", help="TLS material for the device listener")
    tls_sub = tls.add_subparsers(dest="tls_command", required=True)
    ensure = tls_sub.add_parser(
        "ensure",
        help="create a CA (unless DIR holds one) and a server certificate signed by it, if missing",
    )
    ensure.add_argument(
        "--dir",
        type=Path,
        help="where ca.crt, server.crt and server.key go (default $FIELDHUB_HOME/tls)",
    )
    ensure.add_argument(
        "--hostname",
        action="append",
        help="a name devices connect to (repeat for several; default localhost and this host)",
    )
    ensure.set_defaults(handler=cmd_tls_ensure)


def cmd_tls_ensure(settings: Settings, args: argparse.Namespace) -> int:
    directory = args.dir or settings.tls_dir
    # Silent when everything is there: scripts/setup runs this on every start.
    if ensure_tls(directory, args.hostname):
        print(f"created TLS material in {directory} (a new CA only if there was none)")
    return 0
