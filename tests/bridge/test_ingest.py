"""The bridge against a real Mosquitto and a real TimescaleDB: exactly-once ingest, presence,
notifications and dead letters."""

from __future__ import annotations

from collections import Counter

import orjson
import psycopg
import pytest

from fieldhub.core import registry
from fieldhub.core.passwords import generate_secret
from tests.bridge.publishing import DevicePublisher
from tests.bridge.traffic import row_count, stored_rows, telemetry_mix
from tests.support import BridgeProcess, DeviceClient, TestStack, wait_for

pytestmark = pytest.mark.integration


def test_every_reading_of_a_mixed_stream_is_stored_exactly_once(stack: TestStack) -> None:
    devices = [f"mix-{n:02d}" for n in range(50)]
    secrets = stack.create_devices(devices)
    messages, expected = telemetry_mix(devices, per_device=200)
    assert len(messages) == 10_000
    # A device that resends a message (its own QoS 1 retry) must not make a second row.
    messages += messages[:200]
    listener = psycopg.connect(stack.database_url, autocommit=True)
    listener.execute("LISTEN telemetry")
    with BridgeProcess(stack) as bridge, DevicePublisher(stack, secrets) as publisher:
        bridge.start().wait_ready()
        publisher.publish(messages)
        wait_for(
            lambda: row_count(stack) >= len(expected),
            timeout=60,
            what=f"{len(expected)} readings",
        )
        # Everything has arrived; wait for the resent copies to be processed too.
        wait_for(
            lambda: bridge.metrics().get("fieldhub_bridge_backlog_messages") == 0.0,
            timeout=30,
            what="the bridge to drain",
        )
        metrics = bridge.metrics()
    stored = stored_rows(stack)
    assert len(stored) == len(set(stored)), "a reading was stored twice"
    assert set(stored) == expected

    received = metrics['fieldhub_bridge_messages_total{kind="telemetry"}'] + metrics.get(
        'fieldhub_bridge_messages_total{kind="senml"}', 0
    )
    assert received == len(messages)
    assert metrics["fieldhub_bridge_rows_total"] >= len(expected)
    # The resent copies collided with stored rows and took the de-duplicating path.
    assert metrics["fieldhub_bridge_staged_batches_total"] >= 1

    # latest_values holds each device's newest value per metric, with its JSON type.
    latest = {
        (r["device_id"], r["metric"]): r["value"]
        for r in stack.query(
            "SELECT device_id, metric, value FROM latest_values JOIN devices USING (device_key)"
        )
    }
    newest: dict[tuple[str, str], tuple[int, object]] = {}
    for device_id, metric, ms, value in expected:
        if (device_id, metric) not in newest or ms > newest[(device_id, metric)][0]:
            newest[(device_id, metric)] = (ms, value)
    assert set(latest) == set(newest)
    assert latest[("mix-00", "mode")] == "eco"
    assert isinstance(latest[("mix-00", "door")], bool)
    for key, (_ms, value) in newest.items():
        if key[1] != "door":
            assert latest[key] == value, key

    state = stack.query(
        "SELECT device_id, online, last_seen FROM device_state JOIN devices USING (device_key)"
    )
    assert {r["device_id"] for r in state if r["online"]} == set(devices)
    events = stack.query(
        "SELECT device_id, online, source FROM presence_events JOIN devices USING (device_key)"
    )
    assert sorted((e["device_id"], e["online"], e["source"]) for e in events) == [
        (d, True, "telemetry") for d in devices
    ]

    # NOTIFY telemetry names device keys.
    notified: set[str] = set()
    for notify in listener.notifies(timeout=1.0):
        notified.update(notify.payload.split())
    listener.close()
    keys = {str(r["device_key"]): r["device_id"] for r in stack.query("SELECT * FROM devices")}
    assert {keys[k] for k in notified} == set(devices)


def test_poison_messages_are_dead_lettered_and_good_ones_keep_flowing(stack: TestStack) -> None:
    secrets = stack.create_devices(["good-1", "bad-1", "off-1"])
    registry.set_enabled(stack.conn, "off-1", False)
    loadgen_password = generate_secret()
    registry.ensure_service_account(
        stack.conn, "svc.loadgen", registry.LOADGEN_ACL, loadgen_password
    )
    stack.sync()
    wait_for(lambda: stack.can_login("good-1", secrets["good-1"]), what="good-1")

    huge = b'{"values": {"t": 1}, "pad": "' + b"x" * (256 * 1024) + b'"}'
    assert len(huge) < 260 * 1024  # under the broker's own limit, over the bridge's
    poison = [
        (b'{"values": {"t": 1', "invalid_json"),
        (b'{"values": {"t": "\xff\xfe"}}', "invalid_utf8"),
        (b'{"values": {"t": NaN}}', "not_finite"),
        (huge, "payload_too_large"),
        (b'{"values": {"t": [1, 2]}}', "bad_type"),
        (b'{"values": "hot"}', "bad_type"),
        (b'{"ts": "yesterday", "values": {"t": 1}}', "ts_invalid"),
    ]
    with BridgeProcess(stack, instance=2) as bridge:
        bridge.start().wait_ready()
        good = DeviceClient(stack.broker.mqtt_devices, "good-1", secrets["good-1"])
        bad = DeviceClient(stack.broker.mqtt_devices, "bad-1", secrets["bad-1"])
        loadgen = DeviceClient(
            stack.broker.mqtt_services, "svc.loadgen", loadgen_password, client_id="loadgen-t"
        )
        for client in (good, bad, loadgen):
            client.connect()
        try:
            for n, (payload, _reason) in enumerate(poison):
                bad.publish("devices/bad-1/telemetry", payload)
                good.publish("devices/good-1/telemetry", orjson.dumps({"values": {"n": n}}))
            loadgen.publish("devices/ghost-1/telemetry", b'{"values": {"t": 1}}')
            loadgen.publish("devices/off-1/telemetry", b'{"values": {"t": 1}}')
            # Valid JSON the database could not store (text may not hold NUL): refused by the
            # decoder, so it never reaches the database and the batch stays whole.
            bad.publish("devices/bad-1/telemetry", b'{"values": {"mode": "a\\u0000b"}}')
            good.publish("devices/good-1/telemetry", orjson.dumps({"values": {"n": 98}}))
            bad.publish("devices/bad-1/status", b"sleepy")
            good.publish("devices/good-1/telemetry", orjson.dumps({"values": {"n": 99}}))
        finally:
            for client in (good, bad, loadgen):
                client.close()

        expected_dead = len(poison) + 4
        wait_for(
            lambda: len(stack.query("SELECT 1 FROM dead_letters")) >= expected_dead,
            timeout=20,
            what="dead letters",
        )
        wait_for(lambda: row_count(stack) == len(poison) + 2, what="good readings")
        metrics = bridge.metrics()
        assert bridge.proc is not None
        assert bridge.proc.poll() is None

    letters = stack.query(
        "SELECT device_id, topic, reason, payload FROM dead_letters ORDER BY received_at, id"
    )
    assert len(letters) == expected_dead
    by_device = [(r["device_id"], r["reason"]) for r in letters]
    assert [reason for device, reason in by_device if device == "bad-1"] == [
        *(reason for _payload, reason in poison),
        "bad_string",
        "bad_status",
    ]
    # Nothing reached the database that it refused: no batch was isolated message by message.
    assert metrics.get("fieldhub_bridge_db_errors_total", 0.0) == 0.0
    assert ("ghost-1", "unknown_device") in by_device
    assert ("off-1", "disabled_device") in by_device
    # The raw payload is kept byte for byte, for replay after a fix.
    assert [bytes(r["payload"]) for r in letters if r["device_id"] == "bad-1"][:7] == [
        payload for payload, _reason in poison
    ]
    reasons = Counter(reason for _device, reason in by_device)
    for reason, count in reasons.items():
        assert metrics[f'fieldhub_bridge_dead_letters_total{{reason="{reason}"}}'] == count
    assert [r["value"] for r in stack.query("SELECT value FROM readings ORDER BY value")] == [
        *map(float, range(len(poison))),
        98.0,
        99.0,
    ]


def test_status_topic_drives_presence(stack: TestStack) -> None:
    secrets = stack.create_devices(["lamp-1"])
    with BridgeProcess(stack, instance=3) as bridge:
        bridge.start().wait_ready()
        lamp = DeviceClient(
            stack.broker.mqtt_devices,
            "lamp-1",
            secrets["lamp-1"],
            will=("devices/lamp-1/status", b"offline"),
        )
        lamp.connect()
        lamp.publish("devices/lamp-1/status", b"online", retain=True)

        def state() -> bool | None:
            rows = stack.query(
                "SELECT online FROM device_state JOIN devices USING (device_key)"
                " WHERE device_id = 'lamp-1'"
            )
            return rows[0]["online"] if rows else None

        wait_for(lambda: state() is True, what="lamp-1 online")
        # An unclean disconnect (no DISCONNECT packet) fires the Last Will.
        lamp.client.loop_stop()
        lamp.client.socket().close()  # type: ignore[union-attr]
        wait_for(lambda: state() is False, timeout=30, what="lamp-1 offline by its Last Will")
    events = stack.query(
        "SELECT online, source FROM presence_events JOIN devices USING (device_key)"
        " WHERE device_id = 'lamp-1' ORDER BY time, id"
    )
    assert [(e["online"], e["source"]) for e in events] == [(True, "status"), (False, "status")]


def test_readings_without_ts_are_each_stored_even_when_they_arrive_together(
    stack: TestStack,
) -> None:
    # Without `ts` a reading is stamped with its receive time, and (device, metric, time) is
    # its identity: a burst from one device arriving in one socket read must not collapse.
    secrets = stack.create_devices(["burst-1"])
    burst = 500
    messages = [
        ("burst-1", "devices/burst-1/telemetry", orjson.dumps({"values": {"n": n}}))
        for n in range(burst)
    ]
    with BridgeProcess(stack) as bridge, DevicePublisher(stack, secrets) as publisher:
        bridge.start().wait_ready()
        publisher.publish(messages, threads=1)
        wait_for(
            lambda: (
                bridge.metrics().get('fieldhub_bridge_messages_total{kind="telemetry"}') == burst
                and bridge.metrics().get("fieldhub_bridge_backlog_messages") == 0.0
            ),
            timeout=30,
            what="the bridge to take the whole burst",
        )
    values = [r["value"] for r in stack.query("SELECT value FROM readings ORDER BY time")]
    assert sorted(values) == [float(n) for n in range(burst)]
