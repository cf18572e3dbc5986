"""`fieldhub export DEVICE`: a device's stored readings, one per line, oldest first."""

from __future__ import annotations

import argparse
import csv
import datetime
import sys
from typing import Any, TextIO

import orjson

from fieldhub.core import db, endpoints
from fieldhub.core.config import Settings


def register(subparsers: Any) -> None:
    export = subparsers.add_parser(
        "export", help="print a device's stored readings, one per line, oldest first"
    )
    export.add_argument("device_id", metavar="DEVICE")
    export.add_argument("--from", dest="start", type=parse_time, help="RFC 3339 or epoch seconds")
    export.add_argument("--to", dest="end", type=parse_time, help="RFC 3339 or epoch seconds")
    export.add_argument("--format", choices=("csv", "ndjson"), default="csv")
    export.set_defaults(handler=cmd_export)


def parse_time(text: str) -> datetime.datetime:
    """An instant given as RFC 3339 (a missing offset means UTC) or epoch seconds."""
    try:
        return datetime.datetime.fromtimestamp(float(text), tz=datetime.UTC)
    except ValueError:
        pass
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an RFC 3339 time nor epoch seconds"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    from fieldhub.core import readings, registry

    with db.connect(endpoints.read_database_url(settings)) as conn:
        device = registry.get_device(conn, registry.check_device_id(args.device_id))
        with conn.cursor(name="export") as cursor:
            cursor.itersize = 5000
            cursor.execute(
                readings.QUERIES["export_readings"],
                {"device_key": device["device_key"], "from": args.start, "to": args.end},
            )
            write_export(cursor, sys.stdout, args.format)
    return 0


def write_export(rows: Any, out: TextIO, fmt: str) -> int:
    """Write rows of export_readings; returns how many."""
    count = 0
    writer = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(("time", "metric", "value", "seq", "unit"))
    for row in rows:
        value: Any
        if row["text_value"] is not None:
            value = row["text_value"]
        elif row["is_bool"]:
            value = bool(row["value"])
        else:
            value = row["value"]
        time_text = row["time"].astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
        if writer is not None:
            cell = ("true" if value else "false") if isinstance(value, bool) else value
            seq = "" if row["seq"] is None else row["seq"]
            writer.writerow((time_text, row["metric"], cell, seq, row["unit"]))
        else:
            line = {"time": time_text, "metric": row["metric"], "value": value, "seq": row["seq"]}
            if row["unit"]:
                line["unit"] = row["unit"]
            out.write(orjson.dumps(line).decode() + "\n")
        count += 1
    return count
