"""`fieldhub jobs`: recent runs of the analysis jobs."""

from __future__ import annotations

import argparse
import datetime as dt
import sys

import orjson

from fieldhub.analysis import service
from fieldhub.cli import Subparsers
from fieldhub.core import endpoints
from fieldhub.core.config import Settings
from fieldhub.core.db import connect


def register(subparsers: Subparsers) -> None:
    jobs = subparsers.add_parser("jobs", help="recent runs of the analysis jobs")
    jobs.add_argument("--job", help="only this job")
    jobs.add_argument("--limit", type=int, default=30)
    jobs.add_argument("--json", action="store_true", help="machine-readable output")
    jobs.set_defaults(handler=cmd_jobs)


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
