"""The identity of a reading through the real bridge (issue #11, "valid readings that vanish in
silence"): every reading of an acknowledged message is stored, or the message is
dead-lettered whole with a reason; a redelivery is stored once; a conflict is counted and
visible. Plus the device key: a device deleted under a running writer."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from fieldhub.bridge.ingest import Batch, DeviceDirectory, IngestWriter, Telemetry
from fieldhub.bridge.metrics import BridgeMetrics
from fieldhub.core import db, registry
from fieldhub.core.decode import decode_telemetry
from tests.support import BridgeProcess, DeviceClient, TestStack, wait_for

pytestmark = pytest.mark.integration


def rows_of(stack: TestStack, device_id: str) -> list[dict[str, Any]]:
    return stack.query(
        "SELECT time, metric, unit, seq, value, text_value, is_bool FROM readings"
        " JOIN devices USING (device_key) WHERE device_id = %s ORDER BY time, metric, unit, seq",
        (device_id,),
    )


def drained(bridge: BridgeProcess, messages: int) -> bool:
    metrics = bridge.metrics()
    received = sum(v for k, v in metrics.items() if k.startswith("fieldhub_bridge_messages_total"))
    return received >= messages and metrics.get("fieldhub_bridge_backlog_messages") == 0.0


def test_an_array_without_ts_keeps_every_reading_of_a_repeated_metric(stack: TestStack) -> None:
    secrets = stack.create_devices(["arr-1"])
    device = DeviceClient(stack.broker.mqtt_devices, "arr-1", secrets["arr-1"])
    with BridgeProcess(stack) as bridge:
        bridge.start().wait_ready()
        device.connect()
        try:
            # A backlog without timestamps: three values of one metric in one message, then
            # another message right after it.
            backlog = [{"values": {"n": 1}}, {"values": {"n": 2}}, {"values": {"n": 3}}]
            device.publish("devices/arr-1/telemetry", orjson.dumps(backlog))
            device.publish("devices/arr-1/telemetry", orjson.dumps({"values": {"n": 4}}))
            wait_for(lambda: drained(bridge, 2), timeout=20, what="both messages")
        finally:
            device.close()
    rows = rows_of(stack, "arr-1")
    assert [r["value"] for r in rows] == [1.0, 2.0, 3.0, 4.0]
    micros = [round(r["time"].timestamp() * 1e6) for r in rows]
    # One receive stamp per object, a microsecond apart; the next message comes after them.
    assert micros[1] - micros[0] == 1
    assert micros[2] - micros[1] == 1
    assert micros[3] > micros[2]


def test_same_ts_and_metric_with_another_seq_is_another_reading(stack: TestStack) -> None:
    secrets = stack.create_devices(["seq-1"])
    device = DeviceClient(stack.broker.mqtt_devices, "seq-1", secrets["seq-1"])
    ts = int(time.time() * 1000) - 5000
    with BridgeProcess(stack) as bridge:
        bridge.start().wait_ready()
        device.connect()
        try:
            for seq, value in ((1, 20.5), (2, 20.5), (3, 21.0)):
                payload = {"ts": ts, "seq": seq, "values": {"temp": value}}
                device.publish("devices/seq-1/telemetry", orjson.dumps(payload))
            wait_for(lambda: drained(bridge, 3), timeout=20, what="three messages")
        finally:
            device.close()
    assert [(r["seq"], r["value"]) for r in rows_of(stack, "seq-1")] == [
        (1, 20.5),
        (2, 20.5),
        (3, 21.0),
    ]


def test_same_identity_other_content_is_a_visible_counted_conflict(stack: TestStack) -> None:
    secrets = stack.create_devices(["con-1"])
    device = DeviceClient(stack.broker.mqtt_devices, "con-1", secrets["con-1"])
    ts = int(time.time() * 1000) - 5000
    first = orjson.dumps({"ts": ts, "seq": 9, "values": {"temp": 21.5, "hum": 40}})
    changed = orjson.dumps({"ts": ts, "seq": 9, "values": {"temp": 99.0, "door": True}})
    with BridgeProcess(stack) as bridge:
        bridge.start().wait_ready()
        device.connect()
        try:
            device.publish("devices/con-1/telemetry", first)
            wait_for(lambda: len(rows_of(stack, "con-1")) == 2, what="the first message")
            device.publish("devices/con-1/telemetry", changed)
            # The first message again (a redelivery): stored once, silently.
            device.publish("devices/con-1/telemetry", first)
            wait_for(lambda: drained(bridge, 3), timeout=20, what="all three messages")
            metrics = bridge.metrics()
        finally:
            device.close()
    rows = rows_of(stack, "con-1")
    # The first value stays; the conflicting message's other reading is stored.
    assert [(r["metric"], r["value"], r["is_bool"]) for r in rows] == [
        ("door", 1.0, True),
        ("hum", 40.0, False),
        ("temp", 21.5, False),
    ]
    letters = stack.query("SELECT device_id, device_key, reason, detail, payload FROM dead_letters")
    assert len(letters) == 1
    [letter] = letters
    assert (letter["device_id"], letter["reason"], bytes(letter["payload"])) == (
        "con-1",
        "conflict",
        changed,
    )
    assert letter["device_key"] == registry.get_device(stack.conn, "con-1")["device_key"]
    assert "metric 'temp'" in letter["detail"]
    assert "seq 9" in letter["detail"]
    assert "stored 21.5, sent 99.0" in letter["detail"]
    assert metrics["fieldhub_bridge_conflicts_total"] == 1.0
    assert metrics['fieldhub_bridge_dead_letters_total{reason="conflict"}'] == 1.0
    # Duplicates are readings with the same identity AND content: the redelivery's two.
    assert metrics["fieldhub_bridge_duplicate_readings_total"] == 2.0
    latest = stack.query(
        "SELECT metric, value FROM latest_values JOIN devices USING (device_key)"
        " WHERE device_id = 'con-1' ORDER BY metric"
    )
    assert [(r["metric"], r["value"]) for r in latest] == [
        ("door", True),
        ("hum", 40),
        ("temp", 21.5),
    ]


def test_senml_records_that_differ_only_by_unit_are_three_readings(stack: TestStack) -> None:
    secrets = stack.create_devices(["ow-1"])
    device = DeviceClient(stack.broker.mqtt_devices, "ow-1", secrets["ow-1"])
    # RFC 8428 section 5.1.5, with a time of now.
    pack = [
        {"bn": "urn:dev:ow:10e2073a01080063", "bt": time.time() - 10, "u": "%RH", "v": 20},
        {"u": "lon", "v": 24.30621},
        {"u": "lat", "v": 60.07965},
    ]
    with BridgeProcess(stack) as bridge:
        bridge.start().wait_ready()
        device.connect()
        try:
            device.publish("devices/ow-1/telemetry/senml", orjson.dumps(pack))
            wait_for(lambda: drained(bridge, 1), timeout=20, what="the pack")
        finally:
            device.close()
    rows = rows_of(stack, "ow-1")
    assert sorted((r["metric"], r["unit"], r["value"]) for r in rows) == [
        ("urn:dev:ow:10e2073a01080063", "%RH", 20.0),
        ("urn:dev:ow:10e2073a01080063", "lat", 60.07965),
        ("urn:dev:ow:10e2073a01080063", "lon", 24.30621),
    ]
    assert len({r["time"] for r in rows}) == 1


def test_nul_in_a_string_is_dead_lettered_and_the_batch_stays_on_the_fast_path(
    stack: TestStack,
) -> None:
    secrets = stack.create_devices(["nul-1", "nul-2"])
    good = DeviceClient(stack.broker.mqtt_devices, "nul-1", secrets["nul-1"])
    bad = DeviceClient(stack.broker.mqtt_devices, "nul-2", secrets["nul-2"])
    poison = [
        b'{"values": {"mode": "eco\\u0000"}}',
        b'[{"n": "mode", "vs": "a\\u0000"}]',
        b'[{"n": "t", "u": "C\\u0000", "v": 1}]',
    ]
    with BridgeProcess(stack) as bridge:
        bridge.start().wait_ready()
        good.connect()
        bad.connect()
        try:
            # QoS 0 so that nothing waits for a PUBACK and everything lands in few batches.
            for n in range(200):
                good.publish("devices/nul-1/telemetry", orjson.dumps({"values": {"n": n}}), qos=0)
                if n % 70 == 0:
                    payload = poison[n // 70]
                    topic = "telemetry" if payload.startswith(b"{") else "telemetry/senml"
                    bad.publish(f"devices/nul-2/{topic}", payload, qos=0)
            wait_for(lambda: drained(bridge, 203), timeout=30, what="every message")
            metrics = bridge.metrics()
        finally:
            good.close()
            bad.close()
    assert len(rows_of(stack, "nul-1")) == 200
    assert rows_of(stack, "nul-2") == []
    letters = stack.query("SELECT device_id, reason, payload FROM dead_letters ORDER BY id")
    assert [(r["device_id"], r["reason"], bytes(r["payload"])) for r in letters] == [
        ("nul-2", "bad_string", payload) for payload in poison
    ]
    # No batch was refused by the database, none split message by message, none staged.
    assert metrics.get("fieldhub_bridge_db_errors_total", 0.0) == 0.0
    assert metrics.get("fieldhub_bridge_staged_batches_total", 0.0) == 0.0
    assert 'fieldhub_bridge_dead_letters_total{reason="db_rejected"}' not in metrics


def test_a_device_deleted_under_the_writer_is_dead_lettered_not_retried(
    stack: TestStack,
) -> None:
    # The directory still says the device exists when its messages are written; the foreign
    # key of latest_values says otherwise. The writer reloads the directory and dead-letters
    # the messages, and a later device of the same id never gets them.
    stack.create_devices(["gone-1", "stays-1"])
    directory = DeviceDirectory(stack.database_url)
    writer = IngestWriter(stack.database_url, directory, BridgeMetrics(99))
    with db.connect(stack.database_url, autocommit=True) as conn:
        directory.reload(conn)
    old_key = directory.key_of("gone-1")
    stays_key = directory.key_of("stays-1")
    assert old_key is not None
    assert stays_key is not None
    registry.delete_device(stack.conn, "gone-1")
    registry.create_device(stack.conn, "gone-1", org=stack.org)
    now = time.time()

    def message(device_id: str, key: int) -> Telemetry:
        payload = orjson.dumps({"values": {"n": 1}})
        topic = f"devices/{device_id}/telemetry"
        return Telemetry(device_id, key, decode_telemetry(payload, now), topic, payload, now)

    try:
        batch = Batch(
            telemetry=[message("gone-1", old_key), message("stays-1", stays_key)], messages=2
        )
        result = writer.write(batch)
    finally:
        writer.close()
    assert result.dead == {"deleted_device": 1}
    assert [r["value"] for r in rows_of(stack, "stays-1")] == [1.0]
    assert rows_of(stack, "gone-1") == []
    letters = stack.query("SELECT device_id, device_key, reason FROM dead_letters")
    assert letters == [{"device_id": "gone-1", "device_key": None, "reason": "deleted_device"}]
    assert directory.key_of("gone-1") not in (None, old_key)
