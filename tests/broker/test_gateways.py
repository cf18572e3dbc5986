"""Gateways at the broker: the rendered `user` block, and what a gateway can and cannot do
through its one connection, against the real broker, bridge and database."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from fieldhub.broker.auth_files import acl_file_problems
from fieldhub.broker.auth_sync import BASE_ACL, render_device_acl
from fieldhub.core import registry, twins
from fieldhub.core.command_requests import get_command, send_command
from tests.support import BridgeProcess, DeviceClient, TestStack, unique_id, wait_for


def test_a_gateway_block_grants_each_child_exactly_a_devices_own_rights() -> None:
    text = render_device_acl(BASE_ACL.read_text(), [], [("gw-1", ["kid-a", "kid-b"])])
    assert acl_file_problems(text) == []
    block = text[text.index("user gw-1") :].strip().splitlines()[1:]
    patterns = [
        line.split(None, 1)[1]
        for line in BASE_ACL.read_text().splitlines()
        if line.startswith("pattern ")
    ]
    expected = [f"topic {p.replace('%u', kid)}" for kid in ("kid-a", "kid-b") for p in patterns]
    assert block == expected
    assert "topic write devices/kid-a/twin/reported" in block
    assert "topic read devices/kid-b/commands/+" in block
    assert not [line for line in block if "#" in line or "+/" in line.split(" ")[-1][:2]]
    assert render_device_acl(BASE_ACL.read_text(), []) == render_device_acl(
        BASE_ACL.read_text(), [], []
    )


@pytest.fixture
def closing() -> Iterator[list[DeviceClient]]:
    clients: list[DeviceClient] = []
    yield clients
    for client in clients:
        client.close()


def _stored(stack: TestStack, device_id: str) -> int:
    rows = stack.query(
        "SELECT count(*) AS n FROM readings JOIN devices USING (device_key) WHERE device_id = %s",
        (device_id,),
    )
    return int(rows[0]["n"])


@pytest.mark.integration
def test_a_gateway_acts_for_its_children_only_and_detaching_stops_it(
    stack: TestStack, closing: list[DeviceClient]
) -> None:
    gw, kid, other = unique_id("gw"), unique_id("kid"), unique_id("stranger")
    secrets = stack.create_devices([gw, kid, other])
    registry.attach_gateway(stack.conn, kid, gw)
    stack.sync()
    twins.update_desired(stack.conn, kid, {"led": "green"}, actor=twins.Actor("t", "api"))
    twins.update_desired(stack.conn, other, {"led": "red"}, actor=twins.Actor("t", "api"))
    with BridgeProcess(stack).start().wait_ready():
        gateway = DeviceClient(stack.broker.mqtt_devices, gw, secrets[gw])
        closing.append(gateway)
        gateway.connect()
        for topic in ("devices/+/commands/+", "devices/+/twin/desired", "devices/+/twin/delta"):
            gateway.subscribe(topic)

        # Commands and desired state of the child come through the gateway's connection;
        # the stranger's do not, though it is subscribed to every device's topics.
        foreign = str(
            send_command(stack.conn, device_id=other, name="x", params={}, ttl_s=600)["id"]
        )
        wait_for(lambda: get_command(stack.conn, foreign)["status"] == "sent", what="sent")
        own = str(send_command(stack.conn, device_id=kid, name="x", params={}, ttl_s=600)["id"])
        wait_for(
            lambda: any(m.topic.endswith(own) for m in list(gateway.received)),
            what="the child's command at the gateway",
        )
        wait_for(
            lambda: any(m.topic == f"devices/{kid}/twin/desired" for m in list(gateway.received)),
            what="the child's desired state at the gateway",
        )
        assert not [m.topic for m in list(gateway.received) if other in m.topic]

        # It publishes for the child: telemetry, the command's ack, a twin report.
        assert (
            gateway.publish_reason(f"devices/{kid}/telemetry", json.dumps({"values": {"t": 1}}))
            == "Success"
        )
        assert (
            gateway.publish_reason(
                f"devices/{kid}/commands/{own}/ack", json.dumps({"status": "succeeded"})
            )
            == "Success"
        )
        assert (
            gateway.publish_reason(
                f"devices/{kid}/twin/reported",
                json.dumps({"version": 1, "state": {"led": "green"}}),
            )
            == "Success"
        )
        # And for the stranger it is refused, and nothing of it is stored.
        for topic, payload in (
            (f"devices/{other}/telemetry", {"values": {"t": 66}}),
            (f"devices/{other}/commands/{foreign}/ack", {"status": "succeeded"}),
            (f"devices/{other}/twin/reported", {"version": 1, "state": {"led": "red"}}),
        ):
            assert gateway.publish_reason(topic, json.dumps(payload)) == "Not authorized"
        assert (
            gateway.publish_reason(f"devices/{gw}/telemetry", '{"values": {"t": 2}}') == "Success"
        )
        wait_for(lambda: _stored(stack, gw) == 1, what="the gateway's own reading")
        wait_for(lambda: get_command(stack.conn, own)["status"] == "succeeded", what="the ack")
        wait_for(
            lambda: twins.get_twin(stack.conn, kid).reported == {"led": "green"},
            what="the child's report",
        )
        assert _stored(stack, kid) == 1
        assert _stored(stack, other) == 0
        assert get_command(stack.conn, foreign)["status"] == "sent"
        assert twins.get_twin(stack.conn, other).reported == {}

        # Detach: from the sync's SIGHUP on, the gateway can do nothing for the child.
        registry.detach_gateway(stack.conn, kid)
        started = time.monotonic()
        stack.sync()
        wait_for(
            lambda: (
                gateway.publish_reason(f"devices/{kid}/telemetry", '{"values": {"t": 3}}')
                == "Not authorized"
            ),
            interval=0.005,
            what="the detached child's telemetry to be refused",
        )
        print(f"detach took effect {1000 * (time.monotonic() - started):.0f} ms after the sync")
        later = str(send_command(stack.conn, device_id=kid, name="y", params={}, ttl_s=600)["id"])
        wait_for(lambda: get_command(stack.conn, later)["status"] == "sent", what="sent")
        assert (
            gateway.publish_reason(f"devices/{gw}/telemetry", '{"values": {"t": 4}}') == "Success"
        )
        wait_for(lambda: _stored(stack, gw) == 2, what="a later reading of the gateway")
        assert not [m for m in list(gateway.received) if m.topic.endswith(later)]
