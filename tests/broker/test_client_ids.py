"""Client ids on the services listener are bound to accounts: no other account, service or
device, can take over a bridge's durable session (REPORT.md question 1: Mosquitto keys
sessions by client id across all listeners and hands a taken id the session before any ACL
check)."""

from __future__ import annotations

import signal

import orjson
import pytest

from tests.support import BridgeProcess, DeviceClient, TestStack, unique_id, wait_for

pytestmark = pytest.mark.integration


def _stored(stack: TestStack, device_id: str) -> list[float]:
    rows = stack.query(
        "SELECT value FROM readings JOIN devices USING (device_key)"
        " WHERE device_id = %s ORDER BY value",
        (device_id,),
    )
    return [r["value"] for r in rows]


def _intrude(port: int, username: str, password: str, client_id: str, clean: bool) -> bool:
    intruder = DeviceClient(port, username, password, client_id=client_id, clean_start=clean)
    try:
        return intruder.connect(raise_on_refusal=False)
    finally:
        intruder.close()


def test_no_other_account_can_take_over_a_bridges_session(stack: TestStack) -> None:
    sensor = unique_id("sensor")
    # A device whose id is the bridge's old client id, and one that asks for the bridge's
    # account name as its client id: both used to reach the bridge's session.
    lookalike = "fieldhub-bridge-41"
    claimer = unique_id("claimer")
    secrets = stack.create_devices([sensor, lookalike, claimer])
    intruder = stack.service_account("svc.intruder", acl=[])
    publisher = DeviceClient(stack.broker.mqtt_devices, sensor, secrets[sensor])
    publisher.connect()
    try:
        with BridgeProcess(stack, instance=41) as bridge:
            bridge.start().wait_ready()
            publisher.publish(f"devices/{sensor}/telemetry", orjson.dumps({"values": {"n": 1}}))
            wait_for(lambda: _stored(stack, sensor) == [1.0], what="the first reading")
            # Online: every attempt at the bridge's client ids leaves it connected.
            attempts = [
                (stack.broker.mqtt_services, intruder, stack.bridge_password, client_id, clean)
                for client_id in (bridge.username, "fieldhub-bridge-41")
                for clean in (False, True)
            ]
            attempts += [
                (stack.broker.mqtt_devices, lookalike, secrets[lookalike], lookalike, True),
                (stack.broker.mqtt_devices, claimer, secrets[claimer], bridge.username, True),
            ]
            for attempt in attempts:
                assert _intrude(*attempt), f"positive control: {attempt[1]} may log in"
            publisher.publish(f"devices/{sensor}/telemetry", orjson.dumps({"values": {"n": 2}}))
            wait_for(lambda: _stored(stack, sensor) == [1.0, 2.0], what="the second reading")
            assert "disconnected from the broker" not in bridge.log()
            assert bridge.log().count(f"as {bridge.username} (session present") == 1

            # Offline: the session holds the bridge's share of telemetry until it returns.
            bridge.kill(signal.SIGKILL)
            bridge.wait(timeout=10)
            for n in (3, 4, 5):
                publisher.publish(f"devices/{sensor}/telemetry", orjson.dumps({"values": {"n": n}}))
            for attempt in attempts:
                assert _intrude(*attempt)
            # Had any attempt taken the session over, a clean start would have emptied it (and
            # a resumed one would have dropped what the intruder may not read).
            with BridgeProcess(stack, instance=41) as back:
                back.start().wait_ready()
                try:
                    wait_for(
                        lambda: _stored(stack, sensor) == [1.0, 2.0, 3.0, 4.0, 5.0],
                        timeout=20,
                        what="the readings queued while the bridge was down",
                    )
                except AssertionError as exc:
                    raise AssertionError(
                        f"{exc}: stored {_stored(stack, sensor)}\n{back.log()[-3000:]}"
                    ) from None
                assert f"as {back.username} (session present: True)" in back.log()
    finally:
        publisher.close()
