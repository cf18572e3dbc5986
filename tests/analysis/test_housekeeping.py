"""Retention and offline detection against the real database."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import psycopg
import pytest

from fieldhub.analysis import housekeeping
from fieldhub.core.config import ConfigError, Settings
from fieldhub.core.db import Conn
from tests.analysis.conftest import key_of

pytestmark = pytest.mark.integration


def _now(db: Conn) -> dt.datetime:
    row = db.execute("SELECT now() AS now").fetchone()
    assert row is not None
    return row["now"]  # type: ignore[no-any-return]


def test_horizons_come_from_settings() -> None:
    settings = Settings.from_env(
        {"FIELDHUB_RETENTION_RAW_DAYS": "7", "FIELDHUB_RETENTION_ROLLUP_1H_DAYS": "0"}
    )
    assert housekeeping.retention_horizons(settings) == {
        "readings": 7,
        "rollup_1m": 365,
        "dead_letters": 14,
    }


@pytest.mark.parametrize("raw", ["-1", "thirty", "1.5"])
def test_bad_retention_settings_are_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="FIELDHUB_RETENTION_RAW_DAYS"):
        Settings.from_env({"FIELDHUB_RETENTION_RAW_DAYS": raw})


def _chunk_end(moment: dt.datetime, chunk: dt.timedelta) -> dt.datetime:
    # TimescaleDB aligns chunks to multiples of the interval since the Unix epoch.
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return moment - ((moment - epoch) % chunk) + chunk


def test_retention_drops_exactly_the_chunks_past_the_horizon(
    db: Conn, make_devices: Callable[..., list[str]]
) -> None:
    make_devices("old1")
    now = _now(db)
    day = dt.timedelta(days=1)
    tables: dict[str, tuple[str, dt.timedelta, int, list[float]]] = {
        # table: (time column, chunk interval, horizon in days, ages of rows in days)
        "readings": ("time", day, 30, [45, 31.5, 30.2, 29.9, 29.5, 1]),
        "rollup_1m": ("bucket", 7 * day, 365, [900, 380, 366, 364, 200, 1]),
        "dead_letters": ("received_at", day, 14, [20, 14.6, 14.1, 13, 1]),
    }
    old1 = key_of(db, "old1")
    for age in tables["readings"][3]:
        db.execute(
            "INSERT INTO readings (time, device_key, metric, value) VALUES (%s, %s, 't', 1)",
            (now - age * day, old1),
        )
    for age in tables["rollup_1m"][3]:
        db.execute(
            "INSERT INTO rollup_1m (bucket, device_key, metric, count) VALUES (%s, %s, 't', 1)",
            (now - age * day, old1),
        )
    for age in tables["dead_letters"][3]:
        db.execute(
            "INSERT INTO dead_letters (received_at, topic, reason, payload)"
            " VALUES (%s, 'devices/x/telemetry', 'invalid_json', 'x')",
            (now - age * day,),
        )

    result = housekeeping.apply_retention(db, {table: spec[2] for table, spec in tables.items()})

    for table, (column, chunk, horizon_days, ages) in tables.items():
        horizon = now - horizon_days * day
        times = [now - age * day for age in ages]
        # Exactly the rows whose whole chunk lies past the horizon are gone.
        expected = sorted(t for t in times if _chunk_end(t, chunk) > horizon)
        remaining = [r["t"] for r in db.execute(f"SELECT {column} AS t FROM {table} ORDER BY 1")]
        assert remaining == expected, table
        assert all(t in remaining for t in times if t >= horizon), table
        assert len(remaining) < len(times), table
        assert result["dropped"][table] >= 1


def test_http_ingest_keys_are_kept_for_their_documented_retention(
    db: Conn, make_devices: Callable[..., list[str]]
) -> None:
    make_devices("http1")
    key = key_of(db, "http1")
    keep = housekeeping.INGEST_KEYS_KEEP_HOURS
    for name, age_h in (("old", keep + 0.1), ("young", keep - 0.1)):
        db.execute(
            "INSERT INTO ingest_idempotency (device_key, key, body_sha256, status, response,"
            " created_at) VALUES (%s, %s, '', 200, '{}', now() - %s * interval '1 hour')",
            (key, name, age_h),
        )
    result = housekeeping.apply_retention(db, {})
    assert result["dropped"]["ingest_idempotency"] == 1
    assert [r["key"] for r in db.execute("SELECT key FROM ingest_idempotency")] == ["young"]


def test_silent_device_is_marked_offline_with_an_event_and_a_notification(
    db: Conn, database_url: str, make_devices: Callable[..., list[str]]
) -> None:
    make_devices("quiet", "chatty", "already-off")
    db.execute("UPDATE devices SET offline_after_s = 60 WHERE device_id = 'quiet'")
    db.execute(
        """
        INSERT INTO device_state (device_key, online, last_seen)
        SELECT d.device_key, s.online, s.last_seen
        FROM devices d JOIN (VALUES
            ('quiet', true, now() - interval '61 seconds'),
            ('chatty', true, now() - interval '200 seconds'),  -- default timeout is 300 s
            ('already-off', false, now() - interval '1 day')
        ) AS s (device_id, online, last_seen) USING (device_id)
        """
    )
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN presence")
        marked = housekeeping.mark_silent_devices_offline(db)
        assert marked == ["quiet"]
        notifications = listener.notifies(timeout=5, stop_after=1)
        payloads = [n.payload for n in notifications]
    # Presence notifications name the device key, as the bridge's do.
    assert payloads == [f"{key_of(db, 'quiet')} offline"]
    states = {
        r["device_id"]: r["online"]
        for r in db.execute(
            "SELECT device_id, online FROM device_state JOIN devices USING (device_key)"
        )
    }
    assert states == {"quiet": False, "chatty": True, "already-off": False}
    events = db.execute(
        "SELECT device_id, online, source FROM presence_events JOIN devices USING (device_key)"
    ).fetchall()
    assert events == [{"device_id": "quiet", "online": False, "source": "timeout"}]
    # Marked once: a second pass finds nothing new.
    assert housekeeping.mark_silent_devices_offline(db) == []
