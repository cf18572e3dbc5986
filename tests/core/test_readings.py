"""The readings write path (fieldhub.core.readings): the binary COPY encoding (pure), and the
fast and staged paths, duplicates and conflicts against a real TimescaleDB."""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from fieldhub.core import readings, registry
from fieldhub.core.db import Conn
from fieldhub.core.decode import (
    MAX_FUTURE_SKEW_S,
    MAX_SEQ,
    MIN_TIMESTAMP,
    Reading,
    decode_senml,
    decode_telemetry,
)

# Columns in copy_readings' order: time, device_key, seq, metric, unit, value, text, is_bool.
_INT_COLUMNS = {0, 1, 2, 8}


def _parse_copy(data: bytes, fields: int = 8) -> list[tuple[object, ...]]:
    """A minimal reader of PostgreSQL's binary COPY format, for the readings columns."""
    assert data.startswith(b"PGCOPY\n\xff\r\n\x00")
    pos = 19
    rows: list[tuple[object, ...]] = []
    while True:
        (count,) = struct.unpack_from(">h", data, pos)
        pos += 2
        if count == -1:
            assert pos == len(data)
            return rows
        assert count == fields
        values: list[object] = []
        for column in range(fields):
            (length,) = struct.unpack_from(">i", data, pos)
            pos += 4
            if length == -1:
                values.append(None)
                continue
            raw = data[pos : pos + length]
            pos += length
            if column in _INT_COLUMNS:
                values.append(int.from_bytes(raw, "big", signed=True))
            elif column == 5:
                values.append(struct.unpack(">d", raw)[0])
            elif column == 7:
                values.append(raw == b"\x01")
            else:
                values.append(raw.decode())
        rows.append(tuple(values))


def test_encode_copy_writes_postgres_binary_rows() -> None:
    first = [
        Reading(1_764_237_600.123, "temp", 21.5, None, False, 7),
        Reading(1_764_237_600.123, "mode", None, "éco", False, 7),
        Reading(946_684_800.0, "door", 1.0, None, True, None),
    ]
    second = [Reading(1_764_237_600.123, "h", 40.0, None, False, None, "%RH")]
    data, count = readings.encode_copy([(12, first), (2**40, second)])
    assert count == 4
    assert _parse_copy(data) == [
        # microseconds since 2000-01-01, exact to the millisecond the device sent
        (817_552_800_123_000, 12, 7, "temp", "", 21.5, None, False),
        (817_552_800_123_000, 12, 7, "mode", "", None, "éco", False),
        (0, 12, None, "door", "", 1.0, None, True),
        (817_552_800_123_000, 2**40, None, "h", "%RH", 40.0, None, False),
    ]
    staged, _ = readings.encode_copy([(12, first), (13, second)], ordinals=True)
    assert [row[-1] for row in _parse_copy(staged, fields=9)] == [0, 0, 0, 1]


def test_newest_leaves_out_conflicting_readings() -> None:
    old = Reading(100.0, "t", 1.0, None, False, None)
    new = Reading(200.0, "t", 2.0, None, False, None)
    other_unit = Reading(300.0, "t", 3.0, None, False, None, "Cel")
    latest = readings.newest([(1, [old]), (1, [new, other_unit])])
    assert latest == {(1, "t", ""): new, (1, "t", "Cel"): other_unit}
    conflict = readings.Conflict(
        1, "t", "", dt.datetime.fromtimestamp(200.0, dt.UTC), None, 2.0, 5.0
    )
    assert readings.newest([(1, [old]), (1, [new])], skip=[conflict]) == {(1, "t", ""): old}
    assert conflict.describe() == (
        "metric 't' unit '' time 1970-01-01T00:03:20Z seq none: stored 5.0, sent 2.0"
    )


# -- against the database --------------------------------------------------------------------


@pytest.fixture
def conn(database_url: str) -> Iterator[Conn]:
    with psycopg.connect(database_url, row_factory=dict_row) as connection:
        readings.create_staging(connection)
        connection.commit()
        yield connection


@pytest.fixture
def key(conn: Conn) -> int:
    registry.create_org(conn, "w")
    registry.create_device(conn, "meter", org="w", password_hash="unused", secret="unused")
    row = conn.execute("SELECT device_key FROM devices WHERE device_id = 'meter'").fetchone()
    conn.commit()
    assert row is not None
    return int(row["device_key"])


def _stored(conn: Conn) -> list[tuple[Any, ...]]:
    rows = conn.execute(
        "SELECT metric, unit, seq, value, text_value, is_bool FROM readings"
        " ORDER BY time, metric, unit, seq"
    ).fetchall()
    return [tuple(r.values()) for r in rows]


@pytest.mark.integration
def test_fast_path_then_duplicates_and_a_conflict_on_the_staged_path(conn: Conn, key: int) -> None:
    rx = 1_764_237_700.0
    first = decode_telemetry(b'{"seq": 1, "values": {"a": 1, "b": "x", "c": true}}', rx)
    with conn.transaction():
        written = readings.write(conn, [(key, first)])
    assert (written.rows, written.inserted, written.staged, written.conflicts) == (3, 3, False, [])

    # The same message again (a redelivery) plus one that changes "b": the COPY collides,
    # the savepoint takes the batch to the staged path.
    changed = decode_telemetry(b'{"seq": 1, "values": {"a": 1, "b": "y", "c": true}}', rx)
    with conn.transaction():
        written = readings.write(conn, [(key, first), (key, changed)])
    assert written.staged
    assert (written.rows, written.inserted, written.duplicates) == (6, 0, 5)
    [conflict] = written.conflicts
    assert (conflict.ordinal, conflict.metric, conflict.sent, conflict.stored) == (1, "b", "y", "x")
    assert _stored(conn) == [
        ("a", "", 1, 1.0, None, False),
        ("b", "", 1, None, "x", False),
        ("c", "", 1, 1.0, None, True),
    ]


@pytest.mark.integration
def test_without_savepoint_a_collision_is_left_to_the_caller(conn: Conn, key: int) -> None:
    batch = [(key, decode_telemetry(b'{"ts": 1764237600, "values": {"a": 1}}', 1_764_237_700.0))]
    with conn.transaction():
        readings.write(conn, batch, savepoint=False)
    with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
        readings.write(conn, batch, savepoint=False)
    with conn.transaction():
        written = readings.write(conn, batch, staged=True)
    assert (written.inserted, written.duplicates, written.conflicts) == (0, 1, [])


@pytest.mark.integration
def test_within_one_staged_batch_the_earlier_message_wins(conn: Conn, key: int) -> None:
    rx = 1_764_237_700.0
    one = decode_telemetry(b'{"ts": 1764237600, "seq": 4, "values": {"a": 1}}', rx)
    two = decode_telemetry(b'{"ts": 1764237600, "seq": 4, "values": {"a": 2}}', rx)
    with conn.transaction():
        written = readings.write(conn, [(key, one), (key, two)], staged=True)
    assert written.inserted == 1
    assert [(c.ordinal, c.sent, c.stored) for c in written.conflicts] == [(1, 2.0, 1.0)]
    assert _stored(conn) == [("a", "", 4, 1.0, None, False)]


@pytest.mark.integration
def test_identity_includes_unit_and_seq(conn: Conn, key: int) -> None:
    rx = 1_764_237_700.0
    senml = decode_senml(b'[{"bn": "h", "u": "%RH", "v": 20}, {"u": "lon", "v": 24.3}]', rx)
    seq1 = decode_telemetry(b'{"ts": 1764237600, "seq": 1, "values": {"h": 20}}', rx)
    seq2 = decode_telemetry(b'{"ts": 1764237600, "seq": 2, "values": {"h": 20}}', rx)
    no_seq = decode_telemetry(b'{"ts": 1764237600, "values": {"h": 20}}', rx)
    with conn.transaction():
        written = readings.write(conn, [(key, senml), (key, seq1), (key, seq2), (key, no_seq)])
    assert (written.inserted, written.staged) == (5, False)
    # NULLS NOT DISTINCT: a message without seq sent twice is still one reading.
    with conn.transaction():
        again = readings.write(conn, [(key, no_seq)])
    assert (again.inserted, again.duplicates) == (0, 1)


@pytest.mark.integration
def test_every_extreme_the_decoder_accepts_is_accepted_by_postgresql(conn: Conn, key: int) -> None:
    # The far edges of each field the decoder lets through (tests/core/test_decode.py checks
    # that nothing beyond them gets through): PostgreSQL must take every one.
    rx = 1_764_237_700.0
    payload = (
        b'[{"ts": %d, "seq": %d, "values": {"big": 1.7976931348623157e308, "tiny": 5e-324,'
        b' "neg": -18446744073709551615, "u64": 18446744073709551615,'
        b' "text": "%s", "emoji": "\\ud83d\\ude00", "b": false}},'
        b' {"ts": %f, "seq": 0, "values": {"late": 1}}]'
    ) % (int(MIN_TIMESTAMP), MAX_SEQ, b"\\u00e9" * 256, rx + MAX_FUTURE_SKEW_S)
    decoded = decode_telemetry(payload, rx)
    units = decode_senml(
        b'[{"n": "m", "u": "%s", "v": 1}, {"n": "m", "u": "\\u00b0C", "v": 2}]' % (b"x" * 32), rx
    )
    with conn.transaction():
        written = readings.write(conn, [(key, decoded), (key, units)], savepoint=False)
        latest = readings.newest([(key, decoded), (key, units)])
        readings.upsert_latest(conn, latest)
    assert written.inserted == len(decoded) + len(units) == 10
    stored = conn.execute(
        "SELECT extract(epoch FROM min(time)) AS lo, extract(epoch FROM max(time)) AS hi,"
        " max(seq) AS seq, max(length(text_value)) AS text, max(length(unit)) AS unit"
        " FROM readings"
    ).fetchone()
    assert stored == {
        "lo": pytest.approx(MIN_TIMESTAMP),
        "hi": pytest.approx(rx + MAX_FUTURE_SKEW_S),
        "seq": MAX_SEQ,
        "text": 256,
        "unit": 32,
    }
