"""`fieldhub up`, `fieldhub down` and `fieldhub status`: the local stack."""

from __future__ import annotations

import argparse
import json
import sys

from fieldhub.cli import CommandError, Subparsers
from fieldhub.core.config import Settings
from fieldhub.stack.down import stop_stack
from fieldhub.stack.preflight import StackError
from fieldhub.stack.status import format_status, stack_status, status_ok
from fieldhub.stack.up import detach_up, run_up


def register(subparsers: Subparsers) -> None:
    up = subparsers.add_parser(
        "up",
        help="start the local stack (PostgreSQL, Mosquitto, bridge, worker, web) and supervise it",
        description="Start the stack under $FIELDHUB_HOME (default var/) and keep it running: "
        "a process that dies is restarted with backoff. DATABASE_URL / MQTT_URL, when set, are "
        "used instead of local servers. Ctrl-C (or `fieldhub down`) stops everything.",
    )
    up.add_argument(
        "--demo",
        action="store_true",
        help="also create the demo organisation and login and run 12 simulated devices",
    )
    up.add_argument(
        "--detach",
        action="store_true",
        help="run in the background; return once everything is up",
    )
    up.add_argument(
        "--cluster",
        action="store_true",
        help="also a PostgreSQL streaming replica for reads, two bridges, two web servers "
        "behind nginx (see docs/scaling.md)",
    )
    # The detached daemon itself: runs in the foreground of its own session.
    up.add_argument("--foreground-daemon", action="store_true", help=argparse.SUPPRESS)
    up.set_defaults(handler=cmd_up)

    down = subparsers.add_parser("down", help="stop the local stack (data is kept)")
    down.set_defaults(handler=cmd_down)

    status = subparsers.add_parser(
        "status",
        help="the local stack's processes, and the roles of this host (FIELDHUB_ROLES), "
        "with each one's metrics URL",
    )
    status.add_argument(
        "--json", action="store_true", help="print one JSON object (exit code 0 also when down)"
    )
    status.set_defaults(handler=cmd_status)


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    try:
        if args.detach and not args.foreground_daemon:
            code, message = detach_up(
                settings, demo=args.demo, verbose=args.verbose, cluster=args.cluster
            )
            print(message, file=sys.stdout if code == 0 else sys.stderr)
            return code
        return run_up(settings, demo=args.demo, announce=_announce, cluster=args.cluster)
    except StackError as exc:
        raise CommandError(str(exc)) from None


def _announce(text: str) -> None:
    print(text + "Press Ctrl-C to stop.", flush=True)


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    print(stop_stack(settings))
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    status = stack_status(settings)
    if args.json:
        print(json.dumps(status, sort_keys=True))
        return 0
    print(format_status(status))
    return 0 if status_ok(status) else 1
