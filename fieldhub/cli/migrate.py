"""`fieldhub migrate`: apply the schema migrations to the configured database."""

from __future__ import annotations

import argparse

from fieldhub.cli import Subparsers
from fieldhub.core import endpoints
from fieldhub.core.config import Settings
from fieldhub.core.migrate import apply_migrations


def register(subparsers: Subparsers) -> None:
    migrate = subparsers.add_parser(
        "migrate", help="apply the schema migrations (safe to run concurrently)"
    )
    migrate.set_defaults(handler=cmd_migrate)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    applied = apply_migrations(endpoints.database_url(settings))
    for migration in applied:
        print(f"applied {migration.version:04d}_{migration.name}")
    if not applied:
        print("schema is up to date")
    return 0
