"""The `fieldhub` command line: one entry point, one module per noun (org, device, user, ...)
or per process it runs (bridge, web, worker, ...).

Flags fall back to environment variables, which are read once, in fieldhub.core.config. A bad
argument or a refused request exits non-zero with one clear line on stderr, never a traceback.
The command line sits on top of everything else: it imports the apps, the local stack, the
simulator and the benchmarks; none of them imports it."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeAlias

import psycopg

from fieldhub import __version__
from fieldhub.core import endpoints, logs
from fieldhub.core.config import ConfigError, Settings
from fieldhub.core.db import Conn, connect

# Each module adds its subcommands with register(subparsers), in this order (`fieldhub --help`
# lists them so). They are imported here, when the parser is built, because they import
# CommandError from this module.
COMMAND_MODULES = (
    "fieldhub.cli.stack",
    "fieldhub.cli.migrate",
    "fieldhub.cli.tls",
    "fieldhub.cli.org",
    "fieldhub.cli.service_account",
    "fieldhub.cli.device",
    "fieldhub.cli.broker",
    "fieldhub.cli.auth_sync",
    "fieldhub.cli.command",
    "fieldhub.cli.twin",
    "fieldhub.cli.bridge",
    "fieldhub.cli.export",
    "fieldhub.cli.dead_letters",
    "fieldhub.cli.bench",
    "fieldhub.cli.simulate",
    "fieldhub.cli.web",
    "fieldhub.cli.user",
    "fieldhub.cli.token",
    "fieldhub.cli.worker",
    "fieldhub.cli.jobs",
    "fieldhub.cli.imports",
)


# What each module's register(subparsers) gets: the subcommand table of `fieldhub` (or of
# `fieldhub bench`), whose add_parser() makes one subcommand.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class CommandError(Exception):
    """A request the command refuses; the message is the one line the user sees."""


@contextmanager
def connect_registry(settings: Settings) -> Iterator[Conn]:
    """An autocommit connection to the primary database, where the registry lives."""
    with connect(endpoints.database_url(settings), autocommit=True) as conn:
        yield conn


def jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    """A registry row with its times as ISO 8601 strings, for --json output."""
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.items()}


def to_json(value: Any) -> str:
    """Any JSON-like value with datetimes in it as one line of JSON (ISO 8601 times)."""
    return json.dumps(value, default=_json_default, sort_keys=True)


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldhub",
        description="fieldhub: an MQTT IoT backend (Mosquitto, TimescaleDB, Flask).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.add_argument("--version", action="version", version=f"fieldhub {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Only a benchmark takes arguments the top-level parser does not know (its module declares
    # them when it is loaded: fieldhub.cli.bench); anything else unknown is an error as usual.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_extra_args", False):
        parser.error("unrecognized arguments: " + " ".join(extra))
    args.extra_args = extra
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"fieldhub: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(
        logging.DEBUG if args.verbose else getattr(logging, settings.log_level, logging.INFO),
        settings.log_format,
        role=args.command,
    )
    try:
        result: int | None = args.handler(settings, args)
    except (CommandError, ValueError, ConfigError) as exc:
        print(f"fieldhub {args.command}: {exc}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as exc:
        print(
            f"fieldhub {args.command}: database unreachable: {logs.first_line(exc)} "
            "(is the stack up? `fieldhub up --detach`)",
            file=sys.stderr,
        )
        return 3
    except KeyboardInterrupt:
        return 130
    return result or 0
