"""The `fieldhub` command line: one entry point, one module per area of subcommands.

Flags fall back to environment variables, which are read once, in fieldhub.core.config. A bad
argument or a refused request exits non-zero with one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

import psycopg

from fieldhub.core.config import ConfigError, Settings

# Each module adds its subcommands with register(subparsers).
COMMAND_MODULES = (
    "fieldhub.commands.stack",
    "fieldhub.commands.registry",
    "fieldhub.commands.auth_sync",
    "fieldhub.commands.command",
    "fieldhub.commands.bridge",
    "fieldhub.commands.bench",
    "fieldhub.commands.simulate",
    "fieldhub.commands.web",
    "fieldhub.commands.worker",
)


class CommandError(Exception):
    """A request the command refuses; the message is the one line the user sees."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldhub",
        description="fieldhub: an MQTT IoT backend (Mosquitto, TimescaleDB, Flask).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"fieldhub: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else getattr(logging, settings.log_level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result: int | None = args.handler(settings, args)
    except (CommandError, ValueError, ConfigError) as exc:
        print(f"fieldhub {args.command}: {exc}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(
            f"fieldhub {args.command}: database unreachable: {first_line} "
            "(is the stack up? `fieldhub up --detach`)",
            file=sys.stderr,
        )
        return 3
    except KeyboardInterrupt:
        return 130
    return result or 0


if __name__ == "__main__":
    # `python -m fieldhub.cli` would run this file as __main__, a second copy of the module
    # whose CommandError is not the one subcommands raise; hand over to the real module.
    from fieldhub.cli import main as real_main

    sys.exit(real_main())
