"""Every broker admits every device (issue #13, broker host loss): a device homed on another
broker logs in to this one, publishes, and the bridges store it; a gateway acts for its
children here too; and its rights are still exactly its own topics. Against the session broker
(named broker-1), the real auth sync, bridge and database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fieldhub.core import certificates, device_ca, registry
from tests.support import (
    BridgeProcess,
    DeviceClient,
    SecondBroker,
    TestStack,
    cert_login,
    unique_id,
    wait_for,
)

pytestmark = pytest.mark.integration

STANDBY_OF = "broker-2"  # the devices' home; the session broker is their standby


def _stored(stack: TestStack, device_id: str) -> int:
    rows = stack.query(
        "SELECT count(*) AS n FROM readings JOIN devices USING (device_key) WHERE device_id = %s",
        (device_id,),
    )
    return int(rows[0]["n"])


def test_a_device_homed_elsewhere_logs_in_publishes_and_is_stored(stack: TestStack) -> None:
    far, gateway, child, neighbour = (
        unique_id("far"),
        unique_id("fargw"),
        unique_id("farkid"),
        unique_id("near"),
    )
    secrets = {
        d: registry.create_device(stack.conn, d, org=stack.org, broker=STANDBY_OF).password
        for d in (far, gateway, child)
    }
    secrets[neighbour] = registry.create_device(
        stack.conn, neighbour, org=stack.org, broker="broker-1"
    ).password
    registry.attach_gateway(stack.conn, child, gateway)
    stack.sync()
    assert stack.query("SELECT broker FROM devices WHERE device_id = %s", (far,)) == [
        {"broker": STANDBY_OF}
    ]
    wait_for(lambda: stack.can_login(far, secrets[far]), what="the standby to admit the device")

    with BridgeProcess(stack).start().wait_ready():
        device = DeviceClient(stack.broker.mqtt_devices, far, secrets[far])
        gw = DeviceClient(stack.broker.mqtt_devices, gateway, secrets[gateway])
        try:
            device.connect()
            gw.connect()
            for seq in range(1, 6):
                reading = json.dumps({"seq": seq, "values": {"level": seq}})
                assert device.publish_reason(f"devices/{far}/telemetry", reading) == "Success"
            # The gateway's rights for its child hold on the standby too.
            kid = json.dumps({"seq": 1, "values": {"level": 1}})
            assert gw.publish_reason(f"devices/{child}/telemetry", kid) == "Success"
            # Least privilege is unchanged: its own topics only, not its neighbour's.
            forged = json.dumps({"seq": 99, "values": {"level": 99}})
            assert device.publish_reason(f"devices/{neighbour}/telemetry", forged) == (
                "Not authorized"
            )
            assert gw.publish_reason(f"devices/{neighbour}/telemetry", forged) == ("Not authorized")
            wait_for(lambda: _stored(stack, far) == 5, what="the standby's readings stored")
            wait_for(lambda: _stored(stack, child) == 1, what="the child's reading stored")
            assert _stored(stack, neighbour) == 0
        finally:
            device.close()
            gw.close()


def test_a_disabled_device_homed_elsewhere_is_refused_here_too(stack: TestStack) -> None:
    far = unique_id("far")
    secret = registry.create_device(stack.conn, far, org=stack.org, broker=STANDBY_OF).password
    stack.sync()
    wait_for(lambda: stack.can_login(far, secret), what="the standby to admit the device")
    registry.set_enabled(stack.conn, far, False)
    stack.sync()
    wait_for(lambda: not stack.can_login(far, secret), what="the standby to refuse it")


def test_a_certificate_device_logs_in_on_the_standby_and_its_revocation_holds_there(
    stack: TestStack, tmp_path: Path
) -> None:
    """A second broker with the device CA copied (docs/security.md) admits a certificate
    device of the other broker on its certificate listener, and its auth-sync's CRL keeps the
    device out there once it is disabled."""
    second = SecondBroker(stack, shared_device_ca=True)
    try:
        device_id = unique_id("certfar")
        registry.create_device(stack.conn, device_id, org=stack.org, broker="broker-1")
        issued = device_ca.issue(stack.broker.tls_dir, device_id)
        certificates.record(stack.conn, device_id, issued)
        cert, key = tmp_path / "device.crt", tmp_path / "device.key"
        cert.write_text(issued.certificate)
        assert issued.private_key is not None
        key.write_text(issued.private_key)
        second.sync()
        wait_for(lambda: cert_login(second.broker, cert, key), what="the standby to admit it")

        registry.set_enabled(stack.conn, device_id, False)
        second.sync()
        wait_for(
            lambda: not cert_login(second.broker, cert, key),
            what="the standby's CRL to hold the disabled device's certificate",
        )
    finally:
        second.close()
