"""`fieldhub tls ensure`: TLS material for the device listener of the local stack."""

from __future__ import annotations

import argparse
from typing import Any

from fieldhub.core.config import Settings
from fieldhub.core.tls import ensure_tls


def register(subparsers: Any) -> None:
    tls = subparsers.add_parser("tls", help="TLS material for the device listener")
    tls_sub = tls.add_subparsers(dest="tls_command", required=True)
    ensure = tls_sub.add_parser(
        "ensure", help="create a local CA and server certificate if missing"
    )
    ensure.set_defaults(handler=cmd_tls_ensure)


def cmd_tls_ensure(settings: Settings, args: argparse.Namespace) -> int:
    if ensure_tls(settings.tls_dir):
        print(f"created a local CA and server certificate in {settings.tls_dir}")
    return 0
