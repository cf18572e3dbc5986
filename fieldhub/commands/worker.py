"""Analysis subcommands: worker (the scheduled jobs), jobs (recent runs), import (a file)."""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from tqdm import tqdm

from fieldhub.analysis import imports, service
from fieldhub.analysis.jobs import JOBS, job_named
from fieldhub.analysis.worker import Worker, default_worker_name, run_if_due
from fieldhub.cli import CommandError
from fieldhub.core import endpoints, registry
from fieldhub.core.config import Settings
from fieldhub.core.db import connect


def register(subparsers: Any) -> None:
    worker = subparsers.add_parser(
        "worker", help="run the analysis jobs (rollups, retention, alerts, imports, ...)"
    )
    worker.add_argument(
        "--once",
        metavar="JOB",
        choices=[job.name for job in JOBS],
        help="run this job once now and exit (unless another worker is running it)",
    )
    worker.add_argument("--name", help="this worker's name in job runs (default host:pid)")
    worker.set_defaults(handler=cmd_worker)

    jobs = subparsers.add_parser("jobs", help="recent runs of the analysis jobs")
    jobs.add_argument("--job", help="only this job")
    jobs.add_argument("--limit", type=int, default=30)
    jobs.add_argument("--json", action="store_true", help="machine-readable output")
    jobs.set_defaults(handler=cmd_jobs)

    imp = subparsers.add_parser("import", help="import readings from a CSV, NDJSON or SenML file")
    imp.add_argument("file", type=Path)
    imp.add_argument("--device", help="device of every line (unless the file names devices)")
    imp.add_argument("--org", help="organisation (default: the device's)")
    imp.add_argument("--format", choices=["csv", "ndjson", "senml"], help="default: by extension")
    imp.add_argument(
        "--queue", action="store_true", help="leave the import to a running worker and follow it"
    )
    imp.set_defaults(handler=cmd_import)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    url = endpoints.database_url(settings)
    name = args.name or default_worker_name()
    if args.once:
        with connect(url, autocommit=True, application_name=f"worker:{args.once}") as conn:
            result = run_if_due(conn, job_named(args.once), settings, worker=name, force=True)
        if result is None:
            raise CommandError(f"job {args.once} is running on another worker right now")
        print(f"{args.once}: {result.outcome}" + (f" ({result.error})" if result.error else ""))
        print(orjson.dumps(result.details, option=orjson.OPT_INDENT_2).decode())
        return 0 if result.outcome in ("ok", "skipped") else 1

    runner = Worker(url, JOBS, settings, name=name)
    stopped = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runner.start()
    while not stopped.wait(1.0):
        pass
    runner.stop()
    return 0


def _fmt_time(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    with connect(endpoints.database_url(settings), autocommit=True) as conn:
        runs = service.list_job_runs(conn, job=args.job, limit=args.limit)
    if args.json:
        sys.stdout.write(
            orjson.dumps(runs, default=str, option=orjson.OPT_INDENT_2).decode() + "\n"
        )
        return 0
    print(f"{'started (UTC)':19}  {'job':15} {'outcome':8} {'ms':>7}  worker / error")
    for run in runs:
        ms = "-" if run["duration_ms"] is None else str(run["duration_ms"])
        tail = run["error"] or run["worker"]
        print(f"{_fmt_time(run['started_at'])}  {run['job']:15} {run['outcome']:8} {ms:>7}  {tail}")
    return 0


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
