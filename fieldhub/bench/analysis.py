"""Benchmarks of the analysis worker: bulk import and the rollup job.

    fieldhub bench import    1,000,000 readings from one CSV file (target: < 20 s)
    fieldhub bench rollups   one day of 1,000 devices at one reading per 10 s (target: < 5 s)

Each run starts a scratch PostgreSQL+TimescaleDB cluster of its own (durable settings, as
`fieldhub up` runs it), or with --database-url uses a scratch database on that server, and
removes it afterwards, so benchmarks never touch real data. Also runnable as
`python -m fieldhub.bench.analysis import|rollups`."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row

from fieldhub.analysis import imports, rollups
from fieldhub.cli import Subparsers
from fieldhub.core.config import Settings
from fieldhub.core.db import Conn, Queries
from fieldhub.core.migrate import apply_migrations
from fieldhub.core.procs import free_port
from fieldhub.stack.postgres import PostgresCluster

ORG = "bench"
QUERIES = Queries(Path(__file__).with_name("analysis.sql"))


def register(subparsers: Subparsers) -> None:
    imp = subparsers.add_parser("import", help="import 1,000,000 readings from one CSV file")
    imp.add_argument("--readings", type=int, default=1_000_000)
    imp.add_argument("--devices", type=int, default=100)
    imp.add_argument(
        "--database-url", help="use a scratch database on this server instead of a scratch cluster"
    )
    imp.set_defaults(handler=bench_import)

    roll = subparsers.add_parser("rollups", help="rollup job over one day of 1,000 devices")
    roll.add_argument("--devices", type=int, default=1000)
    roll.add_argument("--hours", type=int, default=24)
    roll.add_argument("--interval", type=float, default=10.0, help="seconds between readings")
    roll.add_argument(
        "--database-url", help="use a scratch database on this server instead of a scratch cluster"
    )
    roll.set_defaults(handler=bench_rollups)


def _with_dbname(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.contextmanager
def scratch_database(server_url: str | None) -> Iterator[str]:
    """A migrated database of our own: on a scratch cluster (durable settings, like a real
    stack), or, given `server_url`, a scratch database on that server; removed afterwards."""
    if server_url is None:
        base = Path(tempfile.mkdtemp(prefix="fieldhub-bench-analysis-"))
        base.chmod(0o755)  # the postgres user traverses into it
        cluster = PostgresCluster(base / "pg", free_port(), base / "pg.password")
        cluster.init()
        cluster.start()
        try:
            cluster.create_database("fieldhub")
            apply_migrations(cluster.url("fieldhub"))
            yield cluster.url("fieldhub")
        finally:
            cluster.stop(mode="immediate")
            shutil.rmtree(base, ignore_errors=True)
        return
    name = f"bench_analysis_{os.getpid()}"
    admin_url = _with_dbname(server_url, "postgres")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"'.encode())
        admin.execute(f'CREATE DATABASE "{name}"'.encode())
    url = _with_dbname(server_url, name)
    try:
        apply_migrations(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def _devices(conn: Conn, count: int) -> tuple[int, list[str]]:
    ids = [f"bench-{i:05d}" for i in range(count)]
    with conn.transaction():
        row = conn.execute(QUERIES["create_org"], {"name": ORG}).fetchone()
        assert row is not None
        conn.execute(QUERIES["create_devices"], {"devices": ids, "org_id": row["id"]})
    return int(row["id"]), ids


def _one(conn: Conn, name: str) -> Any:
    row = conn.execute(QUERIES[name]).fetchone()
    assert row is not None
    return row["n"]


def _server_url(args: argparse.Namespace) -> str | None:
    return str(args.database_url) if args.database_url else None


def _csv(readings: int, devices: list[str], start: float) -> bytes:
    out = io.StringIO()
    out.write("time,device_id,metric,value\n")
    per_device = readings // len(devices)
    for index, device_id in enumerate(devices):
        for i in range(per_device):
            out.write(f"{start + i * 10:.3f},{device_id},temp,{(i * 7 + index) % 400 / 10}\n")
    return out.getvalue().encode()


def bench_import(settings: Settings, args: argparse.Namespace) -> int:
    with (
        scratch_database(_server_url(args)) as url,
        psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn,
    ):
        org_id, devices = _devices(conn, args.devices)
        per_device = args.readings // len(devices)
        content = _csv(args.readings, devices, time.time() - per_device * 10 - 3600)
        t0 = time.perf_counter()
        created = imports.create_import(
            conn, org_id=org_id, content=content, filename="bench.csv", lock=True
        )
        t_upload = time.perf_counter() - t0
        running = imports.start_locked(conn, created["id"])
        timings: dict[str, float] = {}
        final = imports.run_import(conn, running, timings=timings)
        total = time.perf_counter() - t0
        imports.unlock(conn, created["id"])
        count, rolled = _one(conn, "count_readings"), _one(conn, "rolled_up_readings")
    print(
        f"file: {len(content) / 2**20:.1f} MiB, {per_device * len(devices):,} readings, "
        f"{len(devices)} devices"
    )
    print(f"upload (file into import_files): {t_upload:.2f} s")
    print(
        f"parse + COPY into readings (overlapped): {timings['load_s']:.2f} s; "
        f"rollups of the imported range: {timings['rollups_s']:.2f} s"
    )
    print(
        f"import total: {total:.2f} s = {final['rows_imported'] / total:,.0f} readings/s; "
        f"status {final['status']}"
    )
    print(f"rows in readings: {count:,}; readings covered by rollup_1m: {rolled:,}")
    return 0 if final["status"] == "done" and total < 20 else 1


def bench_rollups(settings: Settings, args: argparse.Namespace) -> int:
    with (
        scratch_database(_server_url(args)) as url,
        psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn,
    ):
        _, devices = _devices(conn, args.devices)
        end = dt.datetime.now(dt.UTC).replace(microsecond=0)
        start = end - dt.timedelta(hours=args.hours)
        t0 = time.perf_counter()
        conn.execute(
            QUERIES["day_of_readings"],
            {"devices": devices, "start": start, "end": end, "step": args.interval},
        )
        conn.execute(QUERIES["latest_of_devices"], {"devices": devices, "time": end})
        conn.execute(QUERIES["analyze_readings"])
        print(
            f"generated {_one(conn, 'count_readings'):,} readings "
            f"in {time.perf_counter() - t0:.1f} s"
        )

        t0 = time.perf_counter()
        first = rollups.run_pass(conn, pass_budget_s=float("inf"))
        t_first = time.perf_counter() - t0
        print(
            f"rollup job, first pass over everything: {t_first:.2f} s "
            f"({first['minutes_written']:,} minute rows, {first['hours_written']:,} hour rows)"
        )

        conn.execute(QUERIES["last_minute_of_readings"], {"devices": devices})
        conn.execute(QUERIES["touch_latest"])
        time.sleep(1.5)  # insert counters reach pg_stat about once a second
        t0 = time.perf_counter()
        routine = rollups.run_pass(conn, hot_chunk_check_s=0)
        print(
            f"rollup job with the routine late-data check of today's chunk (every 10 min; "
            f"nothing late): {time.perf_counter() - t0:.2f} s "
            f"(late-data check {routine['late_check_s']:.2f} s)"
        )
        conn.execute(QUERIES["last_minute_of_readings"], {"devices": devices})
        conn.execute(QUERIES["touch_latest"])
        time.sleep(1.5)
        t0 = time.perf_counter()
        steady = rollups.run_pass(conn, hot_chunk_check_s=3600)
        t_incr = time.perf_counter() - t0
        print(
            f"rollup job, steady-state pass (the last minutes of {len(devices):,} devices): "
            f"{t_incr:.2f} s (late-data check {steady['late_check_s']:.2f} s, "
            f"{steady['minutes_written']:,} minute rows)"
        )

        conn.execute(
            QUERIES["late_backlog"],
            {"devices": devices[:10], "start": start + dt.timedelta(hours=2)},
        )
        time.sleep(1.5)  # insert counters reach pg_stat about once a second
        t0 = time.perf_counter()
        late = rollups.run_pass(conn, hot_chunk_check_s=0)
        t_late = time.perf_counter() - t0
        print(
            f"rollup job with the late-data check of the day's chunks (10 devices sent a 1 h "
            f"backlog): {t_late:.2f} s (late-data check {late['late_check_s']:.2f} s), "
            f"{late['late_ranges']} ranges re-aggregated"
        )
    return 0 if t_incr < 5 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fieldhub.bench.analysis")
    register(parser.add_subparsers(dest="bench", required=True))
    args = parser.parse_args(argv)
    result: int = args.handler(Settings.from_env(), args)
    return result


if __name__ == "__main__":
    sys.exit(main())
