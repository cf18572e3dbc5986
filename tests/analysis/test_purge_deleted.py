"""Deleting a device: the delete is quick whatever the device stored and holds nothing the
ingest of other devices waits on; the worker purges the old key's data in bounded batches
and records it (real database)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from fieldhub.analysis import housekeeping
from fieldhub.analysis.jobs import job_named
from fieldhub.analysis.worker import recent_runs, run_if_due
from fieldhub.core import readings, registry, tombstones
from fieldhub.core.config import Settings
from fieldhub.core.db import Conn
from fieldhub.core.decode import decode_telemetry
from tests.analysis.conftest import key_of

pytestmark = pytest.mark.integration

# Enough that a DELETE of them would take seconds under the tests' load; the delete must not.
STORED = int(os.environ.get("FIELDHUB_TEST_DELETE_READINGS", "200000"))


def _fill(db: Conn, key: int, rows: int) -> None:
    db.execute(
        "INSERT INTO readings (time, device_key, metric, value)"
        " SELECT now() - make_interval(secs => g), %(key)s, 'm' || (g %% 4), g"
        " FROM generate_series(1, %(rows)s) AS g",
        {"key": key, "rows": rows},
    )
    db.execute(
        "INSERT INTO rollup_1m (bucket, device_key, metric, count)"
        " SELECT date_trunc('minute', now()) - make_interval(mins => g), %(key)s, 'm0', 1"
        " FROM generate_series(1, 500) AS g",
        {"key": key},
    )
    db.execute(
        "INSERT INTO dead_letters (received_at, device_id, device_key, topic, reason, payload)"
        " SELECT now() - make_interval(secs => g), 'x', %(key)s, 't', 'bad_json', ''"
        " FROM generate_series(1, 50) AS g",
        {"key": key},
    )


def _count(db: Conn, table: str, key: int) -> int:
    row = db.execute(
        f"SELECT count(*) AS n FROM {table} WHERE device_key = %s",
        (key,),
    ).fetchone()
    assert row is not None
    return int(row["n"])


def _ingest_other(database_url: str, key: int) -> float:
    """One bridge-like batch of another device (readings + latest value), with a lock wait
    that fails loudly instead of hanging; returns its seconds."""
    payload = b'{"values": {"t": 1}}'
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        conn.execute("SET lock_timeout = '2s'")
        started = time.monotonic()
        with conn.transaction():
            messages = [(key, decode_telemetry(payload, time.time()))]
            readings.write(conn, messages, staged=False, savepoint=False)
            readings.upsert_latest(conn, readings.newest(messages))
        return time.monotonic() - started


def test_delete_is_quick_and_holds_up_no_one_elses_ingest(
    db: Conn, database_url: str, make_devices: Any
) -> None:
    make_devices("big-1", "other-1")
    big, other = key_of(db, "big-1"), key_of(db, "other-1")
    _fill(db, big, STORED)

    started = time.monotonic()
    assert registry.delete_device(db, "big-1") == big
    elapsed = time.monotonic() - started
    print(f"delete of a device with {STORED} readings: {elapsed * 1000:.1f} ms")
    assert elapsed < 1.0, f"deleting a device with {STORED} readings took {elapsed:.2f} s"
    assert _count(db, "readings", big) == STORED  # left to the purge job

    # A delete left open (as if slow) blocks no batch of another device.
    with psycopg.connect(database_url, row_factory=dict_row) as deleting:
        make_devices("big-2")
        _fill(db, key_of(db, "big-2"), 1000)
        with deleting.transaction():
            tombstones.delete_device(deleting, "big-2", ["broker-1"])
            beside_delete = _ingest_other(database_url, other)
            print(f"another device's batch beside an open delete: {beside_delete * 1000:.1f} ms")
            assert beside_delete < 2.0
    # Nor does a purge running beside it.
    done = threading.Event()

    def purge() -> None:
        with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
            tombstones.purge_next(conn, batch=5000, budget_s=60)
        done.set()

    thread = threading.Thread(target=purge)
    thread.start()
    try:
        beside_purge = _ingest_other(database_url, other)
        print(f"another device's batch beside a purge: {beside_purge * 1000:.1f} ms")
        assert beside_purge < 2.0
    finally:
        thread.join(120)
    assert done.is_set()


def test_the_worker_purges_a_deleted_key_in_batches_and_records_it(
    db: Conn, make_devices: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_devices("gone-1", "kept-1")
    gone, kept = key_of(db, "gone-1"), key_of(db, "kept-1")
    _fill(db, gone, 3000)
    _fill(db, kept, 100)
    registry.delete_device(db, "gone-1")
    # Small batches, and a budget that runs out after the first few: the next run goes on.
    monkeypatch.setattr(housekeeping, "PURGE_BATCH", 500)
    monkeypatch.setattr(housekeeping, "PURGE_BUDGET_S", 0.0001)
    job = job_named("purge_deleted")
    first = run_if_due(db, job, Settings.from_env({}), worker="test", force=True)
    assert first is not None
    assert first.outcome == "ok"
    assert first.details["keys"][0]["done"] is False
    assert 0 < _count(db, "readings", gone) < 3000
    monkeypatch.setattr(housekeeping, "PURGE_BUDGET_S", 60.0)
    second = run_if_due(db, job, Settings.from_env({}), worker="test", force=True)
    assert second is not None
    assert second.details["keys"][0]["done"] is True
    for table in tombstones.PURGE_TABLES:
        assert _count(db, table, gone) == 0, table
    assert _count(db, "readings", kept) == 100
    assert _count(db, "rollup_1m", kept) == 500
    row = db.execute(
        "SELECT purged_at, purged_rows FROM device_tombstones WHERE device_key = %s", (gone,)
    ).fetchone()
    assert row is not None
    assert row["purged_at"] is not None
    assert row["purged_rows"] == 3000 + 500 + 50
    runs = [r for r in recent_runs(db, job="purge_deleted") if r["outcome"] == "ok"]
    assert len(runs) == 2


def test_every_configured_broker_works_off_the_tombstone(
    db: Conn, make_devices: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The device was homed on one broker but may have connected to any (a failover).
    monkeypatch.setenv(
        "FIELDHUB_BROKERS", "broker-1=mqtt://127.0.0.1:1,broker-2=mqtt://127.0.0.1:2"
    )
    make_devices("multi-1")
    key = key_of(db, "multi-1")
    registry.delete_device(db, "multi-1")
    rows = db.execute(
        "SELECT broker FROM tombstone_brokers WHERE device_key = %s ORDER BY broker", (key,)
    ).fetchall()
    assert [r["broker"] for r in rows] == ["broker-1", "broker-2"]
    # One broker done does not let the id in on the other.
    db.execute(
        "UPDATE tombstone_brokers SET cut_off_at = now(), retained_cleared_at = now(),"
        " drained_at = now(), session_cleared_at = now()"
        " WHERE device_key = %s AND broker = 'broker-1'",
        (key,),
    )
    waiting = tombstones.pending(db, "multi-1")
    assert [w["broker"] for w in waiting] == ["broker-2"]
    assert "auth-sync of broker-2" in waiting[0]["waiting_for"]
