"""Rollups equal the aggregates of raw rows, incrementally and after late data (real DB)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any

import pytest

from fieldhub.analysis import rollups
from fieldhub.core.db import Conn
from tests.analysis.conftest import key_of
from tests.support import wait_for

pytestmark = pytest.mark.integration

RAW_1M = """
SELECT time_bucket('1 minute', time) AS bucket, device_key, metric, unit, min(value) AS min,
       max(value) AS max, avg(value) AS avg, count(*) AS count,
       last(value, time) AS last, max(time) AS last_time
FROM readings WHERE value IS NOT NULL GROUP BY 1, 2, 3, 4
"""
RAW_1H = RAW_1M.replace("'1 minute'", "'1 hour'")


def _table(conn: Conn, sql: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {
        (r["device_key"], r["metric"], r["unit"], r["bucket"]): r
        for r in conn.execute(sql.encode())
    }


def mismatches(conn: Conn) -> list[str]:
    """Every difference between the rollup tables and the same aggregates of raw rows."""
    problems = []
    for table, raw_sql in (("rollup_1m", RAW_1M), ("rollup_1h", RAW_1H)):
        raw = _table(conn, raw_sql)
        rolled = _table(conn, f"SELECT * FROM {table}")
        for key in raw.keys() | rolled.keys():
            want, got = raw.get(key), rolled.get(key)
            if want is None or got is None:
                problems.append(f"{table} {key}: raw {want is not None}, rollup {got is not None}")
                continue
            for column in ("min", "max", "avg", "count", "last", "last_time"):
                a, b = want[column], got[column]
                same = math.isclose(a, b, rel_tol=1e-9) if isinstance(a, float) else a == b
                if not same:
                    problems.append(f"{table} {key} {column}: raw {a!r} != rollup {b!r}")
    return problems


def insert_readings(
    conn: Conn,
    device_id: str,
    metric: str,
    start: dt.datetime,
    count: int,
    step_s: float,
    unit: str = "",
) -> None:
    """`count` readings every `step_s` seconds from `start`, with varied values."""
    params = {
        "start": start,
        "step": step_s,
        "key": key_of(conn, device_id),
        "metric": metric,
        "unit": unit,
        "count": count,
    }
    conn.execute(
        """
        INSERT INTO readings (time, device_key, metric, unit, value)
        SELECT %(start)s + make_interval(secs => i * %(step)s), %(key)s, %(metric)s, %(unit)s,
               sin(i) * 100 + i %% 7
        FROM generate_series(0, %(count)s - 1) AS i
        ON CONFLICT DO NOTHING
        """,
        params,
    )
    # What the bridge maintains; the incremental pass finds new data through it.
    conn.execute(
        """
        INSERT INTO latest_values (device_key, metric, unit, time, value)
        SELECT device_key, metric, unit, max(time), '0' FROM readings
        WHERE device_key = %(key)s AND metric = %(metric)s AND unit = %(unit)s GROUP BY 1, 2, 3
        ON CONFLICT (device_key, metric, unit) DO UPDATE SET time = EXCLUDED.time
        WHERE latest_values.time < EXCLUDED.time
        """,
        params,
    )


def now(conn: Conn) -> dt.datetime:
    row = conn.execute("SELECT now() AS now").fetchone()
    assert row is not None
    return row["now"]  # type: ignore[no-any-return]


def test_pure_bucket_arithmetic() -> None:
    moment = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert rollups.floor_to(moment, rollups.HOUR) == dt.datetime(2026, 1, 2, 3, tzinfo=dt.UTC)
    assert rollups.ceil_to(moment, rollups.MINUTE) == dt.datetime(2026, 1, 2, 3, 5, tzinfo=dt.UTC)
    hour = dt.datetime(2026, 1, 2, 3, tzinfo=dt.UTC)
    merged = rollups.merge_hours(
        [(2, hour), (1, hour + rollups.HOUR), (1, hour), (1, hour + 3 * rollups.HOUR)]
    )
    assert merged == [
        rollups.DeviceRange(1, hour, hour + 2 * rollups.HOUR),
        rollups.DeviceRange(1, hour + 3 * rollups.HOUR, hour + 4 * rollups.HOUR),
        rollups.DeviceRange(2, hour, hour + rollups.HOUR),
    ]


def test_rollups_match_raw_aggregates_incrementally_and_after_late_data(
    db: Conn, make_devices: Callable[..., list[str]]
) -> None:
    make_devices("r1", "r2")
    current = now(db)
    # Two days of history (two chunks at least), text readings that must not be rolled up.
    insert_readings(db, "r1", "temp", current - dt.timedelta(days=2), 2000, 60)
    insert_readings(db, "r2", "hum", current - dt.timedelta(hours=3), 500, 13)
    # The same metric in another unit (SenML) is a series of its own, never mixed in.
    insert_readings(db, "r2", "hum", current - dt.timedelta(hours=3), 200, 29, unit="%RH")
    db.execute(
        "INSERT INTO readings (time, device_key, metric, text_value)"
        " VALUES (%s, %s, 'mode', 'eco')",
        (current - dt.timedelta(hours=1), key_of(db, "r1")),
    )

    first = rollups.run_pass(db)
    assert first["minutes_written"] > 0
    assert mismatches(db) == []
    watermark = dt.datetime.fromisoformat(first["watermark"])
    assert current - dt.timedelta(minutes=4) <= watermark <= current

    # New on-time data: picked up by the incremental pass, nothing else rewritten.
    insert_readings(db, "r2", "hum", current - dt.timedelta(seconds=30), 3, 7)
    second = rollups.run_pass(db)
    assert 0 < second["minutes_written"] <= 10
    assert mismatches(db) == []

    # Late data in an old chunk (a device's backlog from yesterday) and in today's chunk.
    insert_readings(db, "r1", "temp", current - dt.timedelta(days=1, seconds=17), 40, 31)
    insert_readings(db, "r2", "hum", current - dt.timedelta(minutes=50, seconds=3), 20, 11)
    insert_readings(db, "r2", "pressure", current - dt.timedelta(hours=30), 5, 60)
    assert mismatches(db) != []

    # Insert counters reach pg_stat asynchronously (about once a second), hence the retries.
    def settled() -> bool:
        rollups.run_pass(db, hot_chunk_check_s=0)
        return not mismatches(db)

    wait_for(settled, timeout=30, interval=0.5, what="rollups to absorb the late data")


def test_hot_chunk_late_check_is_throttled(
    db: Conn, make_devices: Callable[..., list[str]]
) -> None:
    make_devices("h1")
    current = now(db)
    insert_readings(db, "h1", "temp", current - dt.timedelta(hours=2), 100, 60)
    rollups.run_pass(db)
    rollups.run_pass(db, hot_chunk_check_s=0)  # records today's chunk as checked now
    insert_readings(db, "h1", "temp", current - dt.timedelta(minutes=90, seconds=1), 5, 2)
    # Within the throttle the late rows in today's chunk wait; once due they are absorbed.
    for _ in range(3):
        rollups.run_pass(db, hot_chunk_check_s=3600)
    assert mismatches(db) != []

    def settled() -> bool:
        rollups.run_pass(db, hot_chunk_check_s=0)
        return not mismatches(db)

    wait_for(settled, timeout=30, interval=0.5, what="the throttled late check")


def test_explicit_ranges_cover_imported_data(
    db: Conn, make_devices: Callable[..., list[str]]
) -> None:
    make_devices("x1", "x2")
    current = now(db)
    rollups.run_pass(db)  # nothing yet
    insert_readings(db, "x1", "temp", current - dt.timedelta(days=5), 300, 45)
    insert_readings(db, "x2", "temp", current - dt.timedelta(days=5), 300, 45)
    start = current - dt.timedelta(days=5)
    x1 = key_of(db, "x1")
    rollups.recompute_ranges(
        db, [rollups.DeviceRange(x1, start, start + dt.timedelta(seconds=300 * 45))]
    )
    rows = db.execute("SELECT DISTINCT device_key FROM rollup_1h").fetchall()
    assert [r["device_key"] for r in rows] == [x1]
    minutes = db.execute(
        "SELECT sum(count) AS n FROM rollup_1m WHERE device_key = %s", (x1,)
    ).fetchone()
    assert minutes is not None
    assert minutes["n"] == 300


def test_catching_up_is_done_a_day_at_a_time_within_a_budget(
    db: Conn, make_devices: Callable[..., list[str]]
) -> None:
    make_devices("c1")
    current = now(db)
    insert_readings(db, "c1", "temp", current - dt.timedelta(days=3), 3 * 24 * 12, 300)
    first = rollups.run_pass(db, pass_budget_s=0)
    assert first["catching_up"] is True
    watermark = dt.datetime.fromisoformat(first["watermark"])
    assert current - dt.timedelta(days=3) < watermark < current - dt.timedelta(days=1)
    passes = 1
    while rollups.run_pass(db, pass_budget_s=0).get("catching_up"):
        passes += 1
    assert passes >= 2
    assert mismatches(db) == []
