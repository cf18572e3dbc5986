"""The device simulator: pure parts (values, payloads, command answers) and real devices
against the session broker."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest

from fieldhub.core import registry
from fieldhub.core.brokers import broker_preference
from fieldhub.core.decode import decode_telemetry
from fieldhub.sim.simulate import (
    DeviceModel,
    Ledger,
    SimulatedDevice,
    Stats,
    Target,
    answer_command,
    can_login,
    command_id_from_topic,
    device_ids,
    provision,
    run_devices,
    target_of,
    targets_of,
    telemetry_payload,
)
from tests.support import DeviceClient, TestStack, unique_id, wait_for


# -- unit --------------------------------------------------------------------------------------
def test_device_ids_are_zero_padded_to_the_count() -> None:
    assert device_ids("demo", 12)[:2] == ["demo-01", "demo-02"]
    assert device_ids("demo", 12)[-1] == "demo-12"
    assert device_ids("load", 10000)[0] == "load-00001"


def test_values_move_but_stay_plausible() -> None:
    model = DeviceModel(random.Random(7))
    readings = [model.next_values() for _ in range(2000)]
    temperatures = [r["temperature"] for r in readings]
    assert len(set(temperatures)) > 100  # it moves
    assert all(5 < t < 40 for t in temperatures)
    assert all(10 <= r["humidity"] <= 95 for r in readings)
    assert all(0 < r["battery"] <= 100 for r in readings)
    assert {r["door"] for r in readings} == {True, False}


def test_telemetry_payload_follows_the_device_contract() -> None:
    now = time.time()
    payload = telemetry_payload(3, DeviceModel(random.Random(1)).next_values(), int(now * 1000))
    readings = decode_telemetry(payload, now)
    assert {r.metric for r in readings} == {"temperature", "humidity", "door", "battery"}
    assert all(r.seq == 3 for r in readings)
    assert all(abs(r.time - now) < 0.01 for r in readings)
    assert [r.is_bool for r in readings if r.metric == "door"] == [True]


def test_command_answers() -> None:
    reboot = answer_command(orjson.dumps({"id": "c1", "name": "reboot", "params": {}}))
    assert reboot is not None
    accepted, final, interval = reboot
    assert json.loads(accepted) == {"status": "accepted"}
    assert json.loads(final)["status"] == "succeeded"
    assert interval is None

    faster = answer_command(orjson.dumps({"name": "set_interval", "params": {"seconds": 5}}))
    assert faster is not None
    assert faster[2] == 5.0

    bad = answer_command(orjson.dumps({"name": "set_interval", "params": {"seconds": "x"}}))
    assert bad is not None
    assert json.loads(bad[1])["status"] == "failed"
    assert bad[2] is None

    garbage = answer_command(b"{not json")
    assert garbage is not None
    assert json.loads(garbage[1])["status"] == "rejected"

    # An empty retained message is the backend clearing a finished command.
    assert answer_command(b"") is None


def test_each_device_connects_to_its_home_brokers_listener() -> None:
    one = Target("198.18.0.3", 8883, tls=True)
    two = Target("198.18.0.4", 8883, tls=True)
    near, far = SimulatedDevice("d1", "s", "broker-1"), SimulatedDevice("d2", "s", "broker-2")
    assert target_of(far, {"broker-1": one, "broker-2": two}) == two
    assert target_of(near, {"broker-1": one, "broker-2": two}) == one
    # One target (--url): every device goes there, whatever its home.
    assert target_of(far, one) == one
    with pytest.raises(ValueError, match="d2 is homed on broker-2, which has no URL here"):
        target_of(far, {"broker-1": one})
    # The order it fails over in: home first, then the standbys by its own scores.
    three = {"broker-1": one, "broker-2": two, "broker-3": Target("198.18.0.5", 8883)}
    order = [name for name, _ in targets_of(far, three)]
    assert order == broker_preference("d2", "broker-2", list(three))
    assert order[0] == "broker-2"
    assert targets_of(far, one) == [("broker-2", one)]


def test_the_ledger_is_readable_after_a_flush(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledgers" / "simulate-0.ledger")
    ledger.record("d1", 1, 1700000000123, "broker-1")
    ledger.record("d2", 7, 1700000000456, "broker-2")
    ledger.flush()
    assert ledger.path.read_text() == ("d1 1 1700000000123 broker-1\nd2 7 1700000000456 broker-2\n")
    ledger.record("d1", 2, 1700000001123, "broker-2")
    ledger.close()
    assert ledger.path.read_text().splitlines()[-1] == "d1 2 1700000001123 broker-2"


def test_command_id_from_topic() -> None:
    assert command_id_from_topic("devices/d1/commands/abc", "d1") == "abc"
    assert command_id_from_topic("devices/d2/commands/abc", "d1") is None
    assert command_id_from_topic("devices/d1/commands/abc/ack", "d1") is None


# -- against the session broker ----------------------------------------------------------------
@pytest.mark.integration
def test_simulated_devices_publish_telemetry_and_answer_commands(stack: TestStack) -> None:
    prefix = unique_id("sim")
    secrets = stack.create_devices([f"{prefix}-{i}" for i in range(3)])
    devices = [SimulatedDevice(d, s) for d, s in secrets.items()]
    observer = DeviceClient(
        stack.broker.mqtt_services, stack.service_account("svc.observer"), stack.bridge_password
    )
    observer.connect()
    for topic in ("devices/+/telemetry", "devices/+/status", "devices/+/commands/+/ack"):
        observer.subscribe(topic)

    def mine(suffix: str) -> list[tuple[str, bytes]]:
        return [
            (m.topic, bytes(m.payload))
            for m in list(observer.received)
            if m.topic.startswith(f"devices/{prefix}-") and m.topic.endswith(suffix)
        ]

    stop = threading.Event()
    runner = threading.Thread(
        target=lambda: asyncio.run(
            run_devices(devices, Target("127.0.0.1", stack.broker.mqtt_devices), 0.2, stop.is_set)
        ),
        daemon=True,
    )
    runner.start()
    try:
        wait_for(
            lambda: all(
                len([t for t, _ in mine("/telemetry") if t == f"devices/{d.device_id}/telemetry"])
                >= 3
                for d in devices
            ),
            what="three readings from each simulated device",
        )
        for device in devices:
            payloads = [p for t, p in mine("/telemetry") if device.device_id in t]
            seqs = [
                readings[0].seq or 0
                for readings in (decode_telemetry(p, time.time()) for p in payloads)
            ]
            assert 0 not in seqs, "every simulated reading carries a sequence number"
            assert seqs == sorted(seqs)
            assert len(set(seqs)) == len(seqs)
        assert {t for t, p in mine("/status") if p == b"online"} == {
            f"devices/{d.device_id}/status" for d in devices
        }

        target = devices[1].device_id
        command_id = str(uuid.uuid4())
        command_topic = f"devices/{target}/commands/{command_id}"
        command = {"id": command_id, "name": "reboot", "params": {"delay": 1}}
        observer.publish(command_topic, json.dumps(command), retain=True)
        acks = wait_for(
            lambda: (
                [json.loads(p)["status"] for t, p in mine(f"/commands/{command_id}/ack")]
                if len(mine(f"/commands/{command_id}/ack")) >= 2
                else None
            ),
            what="the command's two acks",
        )
        assert acks == ["accepted", "succeeded"]
        assert all(target in t for t, _ in mine(f"/commands/{command_id}/ack"))
        observer.publish(command_topic, b"", retain=True)  # what the bridge does when final
    finally:
        stop.set()
        runner.join(timeout=20)
    assert not runner.is_alive()
    # A clean stop says "offline" rather than leaving the devices "online".
    wait_for(
        lambda: (
            {t for t, p in mine("/status") if p == b"offline"}
            == {f"devices/{d.device_id}/status" for d in devices}
        ),
        what="offline status from every device after the stop",
    )
    observer.close()


@pytest.mark.integration
def test_provisioning_creates_then_rotates_and_refuses_foreign_ids(stack: TestStack) -> None:
    prefix = unique_id("prov")
    first = provision(stack.conn, org=stack.org, prefix=prefix, count=3)
    assert [d.device_id for d in first] == device_ids(prefix, 3)
    rows = {d["device_id"]: d for d in registry.list_devices(stack.conn, org=stack.org)}
    assert {rows[d.device_id]["labels"]["site"] for d in first} <= {
        "north-farm",
        "river-lab",
        "depot-3",
        "greenhouse",
    }
    second = provision(stack.conn, org=stack.org, prefix=prefix, count=3)
    assert [d.device_id for d in second] == [d.device_id for d in first]
    assert all(a.secret != b.secret for a, b in zip(first, second, strict=True))

    stack.sync()
    target = Target("127.0.0.1", stack.broker.mqtt_devices)
    assert can_login(target, second[0])
    assert not can_login(target, first[0])
    # Devices in the field use the TLS listener, verified against the stack's own CA.
    tls = Target(
        "localhost",
        stack.broker.mqtt_devices_tls,
        tls=True,
        ca_file=stack.broker.tls_dir / "ca.crt",
    )
    assert can_login(tls, second[1])

    registry.create_org(stack.conn, "other-org")
    with pytest.raises(registry.RegistryError, match="another organisation"):
        provision(stack.conn, org="other-org", prefix=prefix, count=1)


@pytest.mark.integration
def test_the_ledger_holds_exactly_the_acknowledged_readings(
    stack: TestStack, tmp_path: Path
) -> None:
    prefix = unique_id("ledger")
    secrets = stack.create_devices([f"{prefix}-{i}" for i in range(3)])
    devices = [SimulatedDevice(d, s) for d, s in secrets.items()]
    ledger = Ledger(tmp_path / "simulate-0.ledger")
    stats = Stats()
    stop = threading.Event()
    target = {"broker-1": Target("127.0.0.1", stack.broker.mqtt_devices)}
    runner = threading.Thread(
        target=lambda: asyncio.run(
            run_devices(devices, target, 0.1, stop.is_set, stats=stats, ledger=ledger)
        ),
        daemon=True,
    )
    runner.start()
    try:
        wait_for(lambda: stats.published >= 30, what="30 acknowledged readings")
    finally:
        stop.set()
        runner.join(timeout=20)
    ledger.close()
    lines = [line.split() for line in ledger.path.read_text().splitlines()]
    assert len(lines) == stats.published
    assert {broker for *_, broker in lines} == {"broker-1"}  # the broker that acknowledged
    for device in devices:
        seqs = [int(seq) for device_id, seq, _, _ in lines if device_id == device.device_id]
        # Acknowledged in order, one connection per device: 1, 2, 3, ... with no gap.
        assert seqs == list(range(1, len(seqs) + 1))
