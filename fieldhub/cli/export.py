"""`fieldhub export DEVICE`: a device's stored readings, one per line, oldest first.

The format is fieldhub.core.reading_files, the same as the web app's export, and
`fieldhub import` reads it back without loss (docs/analysis.md)."""

from __future__ import annotations

import argparse
import datetime
import sys

from fieldhub.cli import Subparsers
from fieldhub.core import db, endpoints, reading_files, timestamps
from fieldhub.core.config import Settings


def register(subparsers: Subparsers) -> None:
    export = subparsers.add_parser(
        "export", help="print a device's stored readings, one per line, oldest first"
    )
    export.add_argument("device_id", metavar="DEVICE")
    export.add_argument("--from", dest="start", type=parse_time, help="RFC 3339 or epoch seconds")
    export.add_argument("--to", dest="end", type=parse_time, help="RFC 3339 or epoch seconds")
    export.add_argument("--metric", help="only this metric")
    export.add_argument("--unit", help="only this unit of --metric ('' for none)")
    export.add_argument("--format", choices=reading_files.FORMATS, default="csv")
    export.set_defaults(handler=cmd_export)


def parse_time(text: str) -> datetime.datetime:
    """An instant given as epoch seconds or as fieldhub.core.timestamps.parse_time reads it."""
    try:
        return datetime.datetime.fromtimestamp(float(text), tz=datetime.UTC)
    except ValueError:
        pass
    try:
        return timestamps.parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an RFC 3339 time nor epoch seconds"
        ) from None


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    from fieldhub.core import readings, registry

    with db.connect(endpoints.read_database_url(settings)) as conn:
        device = registry.get_device(conn, registry.check_device_id(args.device_id))
        rows = readings.export_rows(
            conn,
            device["device_key"],
            start=args.start,
            end=args.end,
            metric=args.metric,
            unit=args.unit,
        )
        for chunk in reading_files.chunks(rows, args.format):
            sys.stdout.write(chunk)
    return 0
