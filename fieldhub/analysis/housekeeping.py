"""Retention, offline detection, command expiry and the purge of deleted devices' data: small
jobs that keep the data honest."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from fieldhub.analysis.worker import JobContext
from fieldhub.core import command_requests, tombstones
from fieldhub.core.config import Settings
from fieldhub.core.db import Conn, Queries

QUERIES = Queries(Path(__file__).with_name("housekeeping.sql"))
# Operational logs, plain tables: kept long enough to debug last week.
JOB_RUNS_KEEP_DAYS = 7
WEBHOOK_DELIVERIES_KEEP_DAYS = 30
# Deleted devices' rows per DELETE (one short transaction each) and seconds per run. A batch of
# 5,000 readings is a few tens of milliseconds of row locks on rows nobody else touches (the key
# is gone); the bridges' inserts go to other keys and never wait on it.
PURGE_BATCH = 5000
PURGE_BUDGET_S = 20.0
# HTTP ingest's Idempotency-Keys: a device retries within minutes; a day covers an outage of
# its uplink or of this service without keeping every request's key forever.
INGEST_KEYS_KEEP_HOURS = 24

log = logging.getLogger(__name__)


def retention_horizons(settings: Settings) -> dict[str, int]:
    """Hypertable -> days kept; tables whose setting is 0 are kept forever and left out."""
    horizons = {
        "readings": settings.retention_raw_days,
        "rollup_1m": settings.retention_rollup_1m_days,
        "rollup_1h": settings.retention_rollup_1h_days,
        "dead_letters": settings.retention_dead_letters_days,
    }
    return {table: days for table, days in horizons.items() if days > 0}


def apply_retention(conn: Conn, horizons: dict[str, int]) -> dict[str, Any]:
    """Drop the chunks past each horizon. A chunk goes once all of it is past the horizon,
    so rows are kept at most one chunk interval (1 day for readings) longer than asked."""
    dropped: dict[str, Any] = {}
    for table, days in horizons.items():
        with conn.transaction():
            row = conn.execute(QUERIES["drop_chunks"], {"table": table, "days": days}).fetchone()
        dropped[table] = int(row["dropped"]) if row else 0
    with conn.transaction():
        dropped["job_runs"] = conn.execute(
            QUERIES["prune_job_runs"], {"days": JOB_RUNS_KEEP_DAYS}
        ).rowcount
        dropped["webhook_deliveries"] = conn.execute(
            QUERIES["prune_webhook_deliveries"], {"days": WEBHOOK_DELIVERIES_KEEP_DAYS}
        ).rowcount
        dropped["ingest_idempotency"] = conn.execute(
            QUERIES["prune_ingest_keys"], {"hours": INGEST_KEYS_KEEP_HOURS}
        ).rowcount
    return {"horizons_days": horizons, "dropped": dropped}


def run_retention(context: JobContext) -> dict[str, Any]:
    return apply_retention(context.conn, retention_horizons(context.settings))


def mark_silent_devices_offline(conn: Conn) -> list[str]:
    with conn.transaction():
        rows = conn.execute(QUERIES["mark_silent_offline"]).fetchall()
    device_ids = [row["device_id"] for row in rows]
    if device_ids:
        log.info("marked %d silent device(s) offline", len(device_ids))
    return device_ids


def run_offline_detection(context: JobContext) -> dict[str, Any]:
    device_ids = mark_silent_devices_offline(context.conn)
    return {"marked_offline": len(device_ids), "devices": device_ids[:20]}


def run_command_expiry(context: JobContext) -> dict[str, Any]:
    with context.conn.transaction():
        return {"expired": command_requests.expire_commands(context.conn)}


def run_purge_deleted(context: JobContext) -> dict[str, Any]:
    """Delete the readings, rollups and dead letters of deleted devices' keys (unreachable
    since their delete) in bounded batches, oldest tombstone first, for at most
    PURGE_BUDGET_S; a key left half-done is continued by the next run."""
    started = time.monotonic()
    purged: list[dict[str, Any]] = []
    while not context.stopping.is_set():
        remaining = PURGE_BUDGET_S - (time.monotonic() - started)
        if remaining <= 0:
            break
        result = tombstones.purge_next(context.conn, batch=PURGE_BATCH, budget_s=remaining)
        if result["device_key"] is None:
            break
        purged.append(result)
        if not result["done"]:
            break
    if purged:
        log.info("purged the data of %d deleted device key(s)", sum(p["done"] for p in purged))
    return {"keys": purged}
