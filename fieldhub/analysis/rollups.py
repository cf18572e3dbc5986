"""1-minute and 1-hour rollups: incremental by a watermark, with late data re-aggregated.

Design (docs/analysis.md has the measurements):

* The watermark is a minute boundary; everything before it has been rolled up. Each pass
  recomputes the minutes from the watermark to now (the open minute included, so the newest
  rollups are at most one pass old) and the hours they fall in, then moves the watermark to
  `now - GRACE`. Readings a device stamps a little in the past are thus not "late".
* Late data (a backlog from a device that was offline, an import) lands before the
  watermark. The bridge cannot be changed and a per-row trigger on readings would tax its
  60,000 rows/s, so detection is trigger-free: PostgreSQL counts inserted rows per table, and
  each readings chunk is a table. A chunk whose counter moved since the last pass is
  compared, hour by hour, raw row count against the rollups' count over the part before the
  watermark; each hour that differs is recomputed from raw rows. The chunk that also
  receives live data moves on every pass, so it is compared at most every
  `hot_chunk_check_s`. Imports recompute their range themselves (`recompute_ranges`).
* A bucket is always recomputed from all its raw rows and upserted, never adjusted
  incrementally, so repeating any of this is harmless."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fieldhub.analysis.worker import JobContext, load_state, save_state
from fieldhub.core.db import Conn, Queries

QUERIES = Queries(Path(__file__).with_name("rollups.sql"))
JOB = "rollups"
MINUTE = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)
# Readings stamped up to this far before now still count as on time (batched sends, clock
# skew, the bridge's commit interval).
GRACE = dt.timedelta(minutes=2)
# Above this span one sequential scan beats per-(device, metric) index scans.
SCAN_THRESHOLD = dt.timedelta(hours=6)
HOT_CHUNK_CHECK_S = 600.0
CATCH_UP_STEP = dt.timedelta(days=1)
PASS_BUDGET_S = 30.0

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DeviceRange:
    device_key: int
    start: dt.datetime
    end: dt.datetime


def floor_to(moment: dt.datetime, step: dt.timedelta) -> dt.datetime:
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return moment - ((moment - epoch) % step)


def ceil_to(moment: dt.datetime, step: dt.timedelta) -> dt.datetime:
    floored = floor_to(moment, step)
    return floored if floored == moment else floored + step


def merge_hours(device_hours: Iterable[tuple[int, dt.datetime]]) -> list[DeviceRange]:
    """Adjacent hours of one device become one range, so recomputing is one query each."""
    ranges: list[DeviceRange] = []
    for device_key, hour in sorted(device_hours):
        last = ranges[-1] if ranges else None
        if last is not None and last.device_key == device_key and last.end >= hour:
            ranges[-1] = DeviceRange(device_key, last.start, max(last.end, hour + HOUR))
        else:
            ranges.append(DeviceRange(device_key, hour, hour + HOUR))
    return ranges


def recompute_range(conn: Conn, start: dt.datetime, end: dt.datetime) -> dict[str, int]:
    """Recompute every bucket of every device in [start, end) from raw rows: the minutes
    touching the range, then the hours containing them (from their minutes)."""
    minute_range = {"start": floor_to(start, MINUTE), "end": ceil_to(end, MINUTE)}
    hour_range = {"start": floor_to(start, HOUR), "end": ceil_to(end, HOUR), "keys": None}
    long_range = end - start > SCAN_THRESHOLD
    with conn.transaction():
        conn.execute(QUERIES["sort_memory"])
        if long_range:
            conn.execute(QUERIES["stage_1m_scan"], minute_range)
            minutes = conn.execute(QUERIES["stage_1m_upsert"]).rowcount
        else:
            minutes = conn.execute(QUERIES["rollup_1m_recent"], minute_range).rowcount
        hours = conn.execute(QUERIES["rollup_1h_scan"], hour_range).rowcount
    return {"minutes": minutes, "hours": hours}


def recompute_ranges(conn: Conn, ranges: Sequence[DeviceRange]) -> dict[str, int]:
    """Recompute the buckets of the given device ranges (widened to whole hours)."""
    if not ranges:
        return {"minutes": 0, "hours": 0}
    params = {
        "keys": [r.device_key for r in ranges],
        "starts": [floor_to(r.start, HOUR) for r in ranges],
        "ends": [
            ceil_to(r.end, HOUR) if r.end > r.start else floor_to(r.start, HOUR) + HOUR
            for r in ranges
        ],
    }
    with conn.transaction():
        conn.execute(QUERIES["sort_memory"])
        conn.execute(QUERIES["stage_1m_devices"], params)
        minutes = conn.execute(QUERIES["stage_1m_upsert"]).rowcount
        hours = conn.execute(QUERIES["rollup_1h_devices"], params).rowcount
    return {"minutes": minutes, "hours": hours}


def run_pass(
    conn: Conn,
    *,
    hot_chunk_check_s: float = HOT_CHUNK_CHECK_S,
    pass_budget_s: float = PASS_BUDGET_S,
) -> dict[str, Any]:
    """One pass of the rollup job; returns what it did for the job run's details."""
    state = load_state(conn, JOB)
    span = conn.execute(QUERIES["readings_span"]).fetchone()
    assert span is not None
    now: dt.datetime = span["now"]
    if span["first_chunk"] is None:
        return {"note": "no readings yet"}
    watermark = (
        dt.datetime.fromisoformat(state["watermark"])
        if "watermark" in state
        else floor_to(span["first_chunk"], HOUR)
    )
    # Counters first: rows inserted after this read show up as a change on the next pass.
    chunks = conn.execute(QUERIES["readings_chunk_inserts"]).fetchall()
    details: dict[str, Any] = {"from": watermark.isoformat()}

    late_started = time.monotonic()
    late = _late_pass(conn, state, chunks, watermark, now, hot_chunk_check_s)
    details.update(late, late_check_s=round(time.monotonic() - late_started, 3))

    # Catching up (first run, or after the worker was down): a day per transaction, the
    # watermark saved after each, and the rest left to the next run once over budget.
    started = time.monotonic()
    minutes = hours = 0
    start = watermark
    while now - start > CATCH_UP_STEP:
        counts = recompute_range(conn, start, start + CATCH_UP_STEP)
        minutes, hours = minutes + counts["minutes"], hours + counts["hours"]
        start += CATCH_UP_STEP
        state["watermark"] = start.isoformat()
        save_state(conn, JOB, state)
        if time.monotonic() - started > pass_budget_s:
            details.update(minutes_written=minutes, hours_written=hours, catching_up=True)
            details["watermark"] = state["watermark"]
            return details
    counts = recompute_range(conn, start, now)
    details["minutes_written"] = minutes + counts["minutes"]
    details["hours_written"] = hours + counts["hours"]

    new_watermark = max(watermark, floor_to(now - GRACE, MINUTE))
    state["watermark"] = new_watermark.isoformat()
    save_state(conn, JOB, state)
    details["watermark"] = state["watermark"]
    return details


def _late_pass(
    conn: Conn,
    state: dict[str, Any],
    chunks: Sequence[dict[str, Any]],
    watermark: dt.datetime,
    now: dt.datetime,
    hot_chunk_check_s: float,
) -> dict[str, Any]:
    seen: dict[str, int] = dict(state.get("chunk_inserts", {}))
    hot_checked_at = state.get("hot_checked_at")
    hot_due = hot_checked_at is None or (
        (now - dt.datetime.fromisoformat(hot_checked_at)).total_seconds() >= hot_chunk_check_s
    )
    first_run = "watermark" not in state
    if first_run:
        # The first pass reads everything, today's chunk included.
        state["hot_checked_at"] = now.isoformat()
    stale: list[tuple[int, dt.datetime]] = []
    checked = 0
    current: dict[str, int] = {}
    for chunk in chunks:
        name, inserted = chunk["chunk_name"], int(chunk["inserted"])
        current[name] = inserted
        if first_run or chunk["range_start"] >= watermark or seen.get(name) == inserted:
            continue
        is_hot = chunk["range_end"] > watermark
        if is_hot and not hot_due:
            # Keep the old counter so the change is still pending when the check is due.
            current[name] = seen.get(name, -1)
            continue
        bounds = {"start": chunk["range_start"], "end": min(chunk["range_end"], watermark)}
        totals = conn.execute(QUERIES["totals_differ"], bounds).fetchone()
        if totals is not None and totals["differ"]:
            rows = conn.execute(QUERIES["stale_hours"], bounds).fetchall()
            stale.extend((row["device_key"], row["hour"]) for row in rows)
        checked += 1
        if is_hot:
            state["hot_checked_at"] = now.isoformat()
    # Dropped chunks fall out of the state here.
    state["chunk_inserts"] = current
    ranges = merge_hours(stale)
    counts = recompute_ranges(conn, ranges)
    if ranges:
        log.info("rollups: re-aggregated %d late hour range(s)", len(ranges))
    return {
        "chunks_checked": checked,
        "late_ranges": len(ranges),
        "late_minutes": counts["minutes"],
    }


def run_job(context: JobContext) -> dict[str, Any]:
    return run_pass(context.conn)
