"""Command subcommands: send, show, list and cancel commands to devices.

These only write to and read from the database (fieldhub.core.command_requests); the bridge
publishes what they queue. Operators on the command line are not scoped to an organisation."""

from __future__ import annotations

import argparse
from datetime import datetime

from fieldhub.cli import Subparsers, to_json
from fieldhub.core import command_requests, endpoints
from fieldhub.core.command_states import STATUSES
from fieldhub.core.config import Settings
from fieldhub.core.db import connect


def register(subparsers: Subparsers) -> None:
    command = subparsers.add_parser("command", help="commands to devices")
    sub = command.add_subparsers(dest="command_command", required=True)

    send = sub.add_parser("send", help="queue a command; the bridge delivers it")
    send.add_argument("device", help="device id")
    send.add_argument("name", help="command name, e.g. reboot or set_interval")
    send.add_argument("--params", default=None, help="JSON object, e.g. '{\"seconds\": 30}'")
    send.add_argument(
        "--ttl",
        type=int,
        default=command_requests.DEFAULT_TTL_S,
        help=f"seconds the command may wait for the device (default "
        f"{command_requests.DEFAULT_TTL_S}, {command_requests.MIN_TTL_S}.."
        f"{command_requests.MAX_TTL_S})",
    )
    send.add_argument("--json", action="store_true", help="print the command as one JSON object")
    send.set_defaults(handler=cmd_send)

    show = sub.add_parser("show", help="a command's status and timeline")
    show.add_argument("id", help="command id")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(handler=cmd_show)

    listing = sub.add_parser("list", help="commands, newest first")
    listing.add_argument("--device", default=None, help="only this device")
    listing.add_argument("--status", default=None, choices=STATUSES, help="only this status")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (1..1000)")
    listing.set_defaults(handler=cmd_list)

    cancel = sub.add_parser("cancel", help="cancel a command that has no final answer yet")
    cancel.add_argument("id", help="command id")
    cancel.set_defaults(handler=cmd_cancel)


def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    params = command_requests.parse_params(args.params) if args.params is not None else {}
    with connect(endpoints.database_url(settings), autocommit=True) as conn:
        command = command_requests.send_command(
            conn, device_id=args.device, name=args.name, params=params, ttl_s=args.ttl
        )
    if args.json:
        print(to_json(command))
    else:
        print(
            f"queued {command['id']} {command['name']} for {command['device_id']} "
            f"(expires {_time(command['expires_at'])})"
        )
    return 0


def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    with connect(endpoints.database_url(settings), autocommit=True) as conn:
        command = command_requests.get_command(conn, args.id)
    if args.json:
        print(to_json(command))
        return 0
    print(f"id:       {command['id']}")
    print(f"device:   {command['device_id']}")
    print(f"name:     {command['name']}")
    print(f"params:   {to_json(command['params'])}")
    print(f"status:   {command['status']}")
    print(f"created:  {_time(command['created_at'])}")
    print(f"expires:  {_time(command['expires_at'])}")
    if command["result"] is not None:
        print(f"result:   {to_json(command['result'])}")
    if command["error"] is not None:
        print(f"error:    {command['error']}")
    print("timeline:")
    for event in command["timeline"]:
        detail = f"  {to_json(event['detail'])}" if event["detail"] else ""
        print(f"  {_time(event['at'])}  {event['status']}{detail}")
    return 0


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    with connect(endpoints.database_url(settings), autocommit=True) as conn:
        commands = command_requests.list_commands(
            conn, device_id=args.device, status=args.status, limit=args.limit
        )
    for command in commands:
        print(
            f"{command['id']}  {command['device_id']:<20} {command['name']:<20} "
            f"{command['status']:<10} {_time(command['created_at'])}"
        )
    if not commands:
        print("no commands")
    return 0


def cmd_cancel(settings: Settings, args: argparse.Namespace) -> int:
    with connect(endpoints.database_url(settings), autocommit=True) as conn:
        command = command_requests.cancel_command(conn, args.id)
    print(f"cancelled {command['id']}")
    return 0


def _time(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")
