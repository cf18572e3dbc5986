"""The ingest ledger: a redelivered message without ts (DUP=1, same packet id on the same
session) is stored once; a stale ledger row is never used; messages with ts never touch it.
The writer against the real database (the DUP copies made here are what the broker sends,
REPORT.md question 4); the bridge process killed between COMMIT and PUBACK in
tests/bridge/test_ingest_property.py."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from fieldhub.bridge import ledger
from fieldhub.bridge.ingest import Batch, DeviceDirectory, IngestWriter, Telemetry
from fieldhub.bridge.metrics import BridgeMetrics
from fieldhub.core import db
from fieldhub.core.decode import decode_senml_stamped, decode_telemetry_stamps
from tests.support import TestStack

pytestmark = pytest.mark.integration

SESSION = "svc.bridge-test@127.0.0.1:1883"
ARRAY = b'[{"values": {"t": 1}}, {"values": {"t": 1}}]'
SENML = b'[{"bn": "p.", "n": "v", "u": "V", "v": 3.3}, {"n": "a", "t": -1, "u": "A", "v": 0.1}]'


class Fixture:
    def __init__(self, stack: TestStack) -> None:
        self.stack = stack
        stack.create_devices(["led-1"])
        self.directory = DeviceDirectory(stack.database_url)
        self.writer = IngestWriter(
            stack.database_url,
            self.directory,
            BridgeMetrics(97),
            session=SESSION,
            receive_maximum=10_000,
        )
        with db.connect(stack.database_url, autocommit=True) as conn:
            self.directory.reload(conn)
        key = self.directory.key_of("led-1")
        assert key is not None
        self.key = key
        self.clock = round(time.time() * 1_000_000)

    def message(self, payload: bytes, mid: int, *, dup: bool = False) -> Telemetry:
        self.clock += 1000
        stamp = ledger.stamp_of(self.clock)
        if b'"bn"' in payload:
            readings, stamped = decode_senml_stamped(payload, stamp)
            topic = "devices/led-1/telemetry/senml"
        else:
            readings, _last, stamped = decode_telemetry_stamps(payload, stamp)
            topic = "devices/led-1/telemetry"
        return Telemetry(
            "led-1", self.key, readings, topic, payload, stamp, mid if stamped else 0, dup
        )

    def write(self, *messages: Telemetry, qos1: int | None = None) -> int:
        batch = Batch(
            telemetry=list(messages),
            messages=len(messages),
            qos1=len(messages) if qos1 is None else qos1,
            ledger=sum(1 for m in messages if m.mid),
        )
        return self.writer.write(batch).ledger_reused

    def rows(self) -> int:
        return int(self.stack.query("SELECT count(*) AS n FROM readings")[0]["n"])

    def packet_ids(self) -> list[int]:
        rows = self.stack.query(
            "SELECT committed, packet_ids, hashes, stamps FROM ingest_ledger ORDER BY committed"
        )
        found = ledger.unpack(
            (r["committed"], bytes(r["packet_ids"]), bytes(r["hashes"]), bytes(r["stamps"]))
            for r in rows
        )
        return sorted(found)


@pytest.fixture
def fx(stack: TestStack) -> Iterator[Fixture]:
    fixture = Fixture(stack)
    yield fixture
    fixture.writer.close()


def test_a_dup_copy_of_a_committed_message_without_ts_is_stored_once(fx: Fixture) -> None:
    assert fx.write(fx.message(ARRAY, 7), fx.message(SENML, 8)) == 0
    assert fx.rows() == 4
    # The broker sends both again after a reconnect: later receive stamps, DUP=1.
    assert fx.write(fx.message(ARRAY, 7, dup=True), fx.message(SENML, 8, dup=True)) == 2
    assert fx.rows() == 4
    # A copy resent once more (the bridge died again before its PUBACK): still the same.
    assert fx.write(fx.message(ARRAY, 7, dup=True)) == 1
    assert fx.rows() == 4


def test_a_copy_in_the_same_batch_as_its_original_is_stored_once(fx: Fixture) -> None:
    assert fx.write(fx.message(ARRAY, 9), fx.message(ARRAY, 9, dup=True)) == 1
    assert fx.rows() == 2


def test_dup_with_other_content_or_no_ledger_row_is_a_new_message(fx: Fixture) -> None:
    fx.write(fx.message(ARRAY, 7))
    other = b'{"values": {"t": 2}}'
    assert fx.write(fx.message(other, 7, dup=True)) == 0
    assert fx.write(fx.message(ARRAY, 11, dup=True)) == 0
    assert fx.rows() == 2 + 1 + 2


def test_a_row_older_than_a_packet_id_cycle_is_never_used(fx: Fixture) -> None:
    # A device repeating itself: packet id 7 comes back 65,534 packet ids later with the same
    # bytes, and that message's batch never committed. Its DUP copy must not be taken for the
    # old message (that would lose it in silence).
    fx.write(fx.message(ARRAY, 7))
    fx.write(qos1=ledger.max_age(10_000))  # what the session committed since
    assert fx.write(fx.message(ARRAY, 7, dup=True)) == 0
    assert fx.rows() == 4
    # ... and one committed message fewer would still have been a genuine redelivery.
    fx.write(fx.message(ARRAY, 12))
    fx.write(qos1=ledger.max_age(10_000) - 2)
    assert fx.write(fx.message(ARRAY, 12, dup=True)) == 1
    assert fx.rows() == 6
    # Batches too old to be used are deleted as later ones are recorded: the first one.
    age = ledger.max_age(10_000)
    kept = fx.stack.query("SELECT committed FROM ingest_ledger ORDER BY committed")
    assert [r["committed"] for r in kept] == [1 + age, 2 + age, 1 + 2 * age]


def test_messages_with_ts_and_qos0_never_write_the_ledger(fx: Fixture) -> None:
    with_ts = fx.message(b'{"ts": 1764237600123, "values": {"t": 1}}', 3)
    assert with_ts.mid == 0
    fx.write(with_ts)
    assert fx.packet_ids() == []
    assert fx.stack.query("SELECT * FROM ingest_ledger_sessions") == []
    fx.write(fx.message(ARRAY, 4))
    assert fx.packet_ids() == [4]
