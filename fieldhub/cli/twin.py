"""`fieldhub twin ...`: a device's desired and reported state.

These only read and write the database (fieldhub.core.twins); the bridge publishes the
retained documents. Operators on the command line are not scoped to an organisation, and a
change made here is recorded as made by "command line (<login>@<host>)"."""

from __future__ import annotations

import argparse
import getpass
import socket
from datetime import datetime

from fieldhub.cli import Subparsers, connect_registry, to_json
from fieldhub.core import twins
from fieldhub.core.config import Settings

HISTORY_SHOWN = 5


def register(subparsers: Subparsers) -> None:
    twin = subparsers.add_parser("twin", help="a device's desired and reported state")
    sub = twin.add_subparsers(dest="twin_command", required=True, metavar="ACTION")

    show = sub.add_parser("show", help="desired, reported, delta and who changed desired last")
    show.add_argument("device_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(handler=cmd_show)

    change = sub.add_parser(
        "set", help="merge a JSON merge patch (RFC 7396) into the desired state"
    )
    change.add_argument("device_id", metavar="ID")
    change.add_argument(
        "--desired",
        required=True,
        metavar="JSON",
        help='a JSON object, e.g. \'{"interval": 30, "led": null}\' (null removes a key)',
    )
    change.add_argument(
        "--if-version",
        type=int,
        metavar="N",
        help="only if the desired state is still at version N (else exit 2, nothing changed)",
    )
    change.add_argument("--json", action="store_true", help="print the twin as one JSON object")
    change.set_defaults(handler=cmd_set)


def _actor() -> twins.Actor:
    try:
        login = getpass.getuser()
    except (KeyError, OSError):
        login = "unknown"
    return twins.Actor(f"command line ({login}@{socket.gethostname()})", "cli")


def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    with connect_registry(settings) as conn:
        twin = twins.get_twin(conn, args.device_id)
        history = twins.desired_history(conn, args.device_id, limit=HISTORY_SHOWN)
    if args.json:
        print(to_json({**twin.as_json(), "history": history}))
        return 0
    _print(twin)
    if history:
        print("desired changed by:")
        for change in history:
            print(
                f"  v{change['version']:<5} {_time(change['changed_at'])}  {change['actor']} "
                f"({change['source']})  {to_json(change['patch'])}"
            )
    return 0


def cmd_set(settings: Settings, args: argparse.Namespace) -> int:
    patch = twins.parse_patch(args.desired)
    with connect_registry(settings) as conn:
        twin = twins.update_desired(
            conn, args.device_id, patch, actor=_actor(), if_version=args.if_version
        )
    if args.json:
        print(to_json(twin.as_json()))
    else:
        print(f"desired state of {twin.device_id} is at version {twin.desired_version}")
        _print(twin)
    return 0


def _print(twin: twins.Twin) -> None:
    print(f"device:    {twin.device_id}")
    print(
        f"desired:   v{twin.desired_version}  {to_json(twin.desired)}"
        f"{'  (changed ' + _time(twin.desired_updated_at) + ')' if twin.desired_updated_at else ''}"
    )
    if twin.reported_at is None:
        print("reported:  nothing yet")
    else:
        print(
            f"reported:  v{twin.reported_version}  {to_json(twin.reported)}  "
            f"(received {_time(twin.reported_at)})"
        )
    print(f"delta:     {to_json(twin.delta) if twin.delta else 'none: in sync'}")


def _time(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")
