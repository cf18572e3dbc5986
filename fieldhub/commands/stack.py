"""Stack subcommands: migrate, tls."""

from __future__ import annotations

import argparse
from typing import Any

from fieldhub import endpoints
from fieldhub.config import Settings
from fieldhub.migrate import apply_migrations
from fieldhub.tls import ensure_tls


def register(subparsers: Any) -> None:
    migrate = subparsers.add_parser(
        "migrate", help="apply schema/ migrations (safe to run concurrently)"
    )
    migrate.set_defaults(handler=cmd_migrate)

    tls = subparsers.add_parser("tls", help="TLS material for the device listener")
    tls_sub = tls.add_subparsers(dest="tls_command", required=True)
    ensure = tls_sub.add_parser(
        "ensure", help="create a local CA and server certificate if missing"
    )
    ensure.set_defaults(handler=cmd_tls_ensure)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    applied = apply_migrations(endpoints.database_url(settings))
    for migration in applied:
        print(f"applied {migration.version:04d}_{migration.name}")
    if not applied:
        print("schema is up to date")
    return 0


def cmd_tls_ensure(settings: Settings, args: argparse.Namespace) -> int:
    if ensure_tls(settings.tls_dir):
        print(f"created a local CA and server certificate in {settings.tls_dir}")
    return 0
