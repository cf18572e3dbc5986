"""`fieldhub import FILE`: readings from a CSV, NDJSON or SenML file, imported now or left to
a running worker."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fieldhub.analysis import imports, service
from fieldhub.cli import CommandError, Subparsers
from fieldhub.core import endpoints, registry
from fieldhub.core.config import Settings
from fieldhub.core.db import connect


def register(subparsers: Subparsers) -> None:
    imp = subparsers.add_parser("import", help="import readings from a CSV, NDJSON or SenML file")
    imp.add_argument("file", type=Path)
    imp.add_argument("--device", help="device of every line (unless the file names devices)")
    imp.add_argument("--org", help="organisation (default: the device's)")
    imp.add_argument("--format", choices=["csv", "ndjson", "senml"], help="default: by extension")
    imp.add_argument(
        "--queue", action="store_true", help="leave the import to a running worker and follow it"
    )
    imp.set_defaults(handler=cmd_import)


def _resolve_org(conn: Any, org: str | None, device: str | None) -> int:
    if org is not None:
        return int(registry.get_org(conn, org)["id"])
    if device is None:
        raise CommandError("give --org (and --device unless the file has a device_id column)")
    return int(registry.get_device(conn, device)["org_id"])


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    try:
        content = args.file.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc.strerror}") from None
    with connect(endpoints.database_url(settings), autocommit=True) as conn:
        org_id = _resolve_org(conn, args.org, args.device)
        created = imports.create_import(
            conn,
            org_id=org_id,
            content=content,
            filename=args.file.name,
            fmt=args.format,
            device_id=args.device,
            lock=not args.queue,
        )
        bar = tqdm(total=len(content), unit="B", unit_scale=True, file=sys.stderr, desc="import")
        if args.queue:
            final = _follow(conn, org_id, created["id"], bar)
        else:
            try:
                running = imports.start_locked(conn, created["id"])

                def show(progress: dict[str, Any]) -> None:
                    bar.n = progress["processed_bytes"]
                    bar.set_postfix(rows_per_s=progress["rows_per_s"], refresh=False)
                    bar.refresh()

                final = imports.run_import(conn, running, on_progress=show)
            finally:
                imports.unlock(conn, created["id"])
        bar.n = final.get("processed_bytes", bar.n)
        bar.close()
        final = service.get_import(conn, org_id, created["id"])
    for error in final["errors"][:20]:
        print(f"line {error['line']}: {error['reason']}", file=sys.stderr)
    if final["rows_rejected"] > 20:
        print(f"... and {final['rows_rejected'] - 20} more bad lines", file=sys.stderr)
    print(
        f"import {final['id']}: {final['status']}, {final['rows_imported']} new readings, "
        f"{final['processed_rows']} read, {final['rows_rejected']} bad lines"
        + (f" ({final['error']})" if final["error"] else "")
    )
    return 0 if final["status"] == "done" else 1


def _follow(conn: Any, org_id: int, import_id: Any, bar: Any) -> dict[str, Any]:
    while True:
        current = service.get_import(conn, org_id, import_id)
        bar.n = current["processed_bytes"]
        bar.set_postfix(status=current["status"], rows_per_s=current["rows_per_s"], refresh=False)
        bar.refresh()
        if current["status"] in ("done", "failed"):
            return current
        time.sleep(0.5)
