"""`fieldhub dead-letters`: refused messages, newest first, with why they were refused."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC

import orjson

from fieldhub.cli import Subparsers
from fieldhub.cli.export import parse_time
from fieldhub.core import dead_letters, endpoints, registry
from fieldhub.core.config import Settings
from fieldhub.core.db import connect


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "dead-letters",
        help="messages the bridge refused, newest first: reason, detail, topic, payload",
    )
    parser.add_argument(
        "--device", metavar="ID", help="only this device's (the current device of that id)"
    )
    parser.add_argument("--since", type=parse_time, help="RFC 3339 or epoch seconds")
    parser.add_argument("--limit", type=_limit, default=50, help="at most N (default 50)")
    parser.add_argument("--json", action="store_true", help="one JSON array, machine-readable")
    parser.set_defaults(handler=cmd_dead_letters)


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 1 to 10000")
    return value


def _one_line(text: str, width: int) -> str:
    # Device-supplied text: control characters (line breaks, terminal escapes) are spelled out.
    flat = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def cmd_dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    with connect(endpoints.read_database_url(settings), autocommit=True) as conn:
        if args.device is not None:
            device = registry.get_device(conn, registry.check_device_id(args.device))
            letters = dead_letters.for_device(
                conn, device["device_key"], since=args.since, limit=args.limit
            )
        else:
            letters = dead_letters.recent(conn, since=args.since, limit=args.limit)
    if args.json:
        sys.stdout.write(
            orjson.dumps(
                [letter.as_json() for letter in letters], option=orjson.OPT_INDENT_2
            ).decode()
            + "\n"
        )
        return 0
    if not letters:
        print("no dead letters")
        return 0
    print(f"{'received (UTC)':19}  {'device':20} {'reason':17} topic / detail / payload")
    for letter in letters:
        when = letter.received_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        payload = letter.payload
        shown = payload.text if payload.kind == "text" else "hex " + payload.text
        print(
            f"{when}  {_one_line(letter.device_id or '-', 20):20} {letter.reason:17} "
            f"{_one_line(letter.topic, 80)}"
        )
        print(f"{'':41}{_one_line(letter.explanation, 100)}")
        if letter.detail:
            print(f"{'':41}detail: {_one_line(letter.detail, 92)}")
        print(f"{'':41}payload ({payload.size} bytes): {_one_line(shown, 80)}")
    return 0
